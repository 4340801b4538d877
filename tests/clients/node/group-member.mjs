// One kafkajs consumer-group member in a process of its own, for the tests
// that kill a member with SIGKILL (groups.test.mjs).
//
//   node group-member.mjs '{"bootstrap":"127.0.0.1:9092","groupId":"g","topic":"t","consumer":{...}}'
//
// `consumer` holds kafkajs consumer options (sessionTimeout and so on). The
// member reports on stdout, one JSON object per line:
//   {"event":"join","memberId":"...","assignment":{"<topic>":[0,3]}}
//   {"event":"message","partition":0,"offset":12,"value":"..."}
//   {"event":"crash","error":"..."}
// It exits when its stdin closes, so it never outlives the test process.

import kafkajs from 'kafkajs'

const { Kafka, logLevel } = kafkajs

const config = JSON.parse(process.argv[2])
const report = obj => process.stdout.write(`${JSON.stringify(obj)}\n`)

const kafka = new Kafka({
  clientId: 'rill-kafkajs-group-member',
  brokers: [config.bootstrap],
  logLevel: logLevel.NOTHING,
  connectionTimeout: 5000,
  requestTimeout: 15000,
  retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2000 },
})
const consumer = kafka.consumer({ groupId: config.groupId, allowAutoTopicCreation: false, ...config.consumer })
consumer.on(consumer.events.GROUP_JOIN, e => {
  report({ event: 'join', memberId: e.payload.memberId, assignment: e.payload.memberAssignment })
})
consumer.on(consumer.events.CRASH, e => {
  report({ event: 'crash', error: String(e.payload.error) })
})

process.stdin.resume()
process.stdin.on('end', () => process.exit(0))

await consumer.connect()
await consumer.subscribe({ topics: [config.topic], fromBeginning: true })
await consumer.run({
  eachMessage: async ({ partition, message }) => {
    report({ event: 'message', partition, offset: Number(message.offset), value: message.value.toString() })
  },
})
