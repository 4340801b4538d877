// End-to-end tests of rill with kafkajs: producer and admin APIs.
//
// kafkajs can only consume through consumer groups, which groups.test.mjs
// tests; this suite covers the producer and the admin client, and checks what
// was produced by the offsets it moved (ListOffsets), not by reading it back.
// The Python suite reads records back with two other clients.
//
// Compression: kafkajs ships only the gzip codec; snappy, lz4 and zstd need
// separate codec packages, so this suite produces with none and gzip only.

import assert from 'node:assert/strict'
import { after, before, describe } from 'node:test'

import kafkajs from 'kafkajs'

import { Broker } from './broker.mjs'
import { errorTypes, failureTracking, sleep } from './harness.mjs'

const { Kafka, CompressionTypes, ConfigResourceTypes, ConfigSource, logLevel, Partitioners } = kafkajs

// Per-test bound; each test's own waits are shorter.
const TEST_TIMEOUT_MS = 60_000
// Kafka's default for retention.ms: 7 days.
const RETENTION_MS_DEFAULT = '604800000'


// The broker's log is printed after the suite when any test failed.
const { test, failed } = failureTracking()

let topicSeq = 0
const newTopicName = base => `kafkajs-${base}-${process.pid}-${topicSeq++}`

/** Poll `fn` until it returns a truthy value, or fail after `timeoutMs`. */
async function eventually(what, fn, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() > deadline) assert.fail(`${what}: not true within ${timeoutMs}ms`)
    await sleep(100)
  }
}

describe('kafkajs against rill', { timeout: 5 * TEST_TIMEOUT_MS }, () => {
  let broker
  let kafka
  let admin
  const clients = []

  before(async () => {
    broker = await Broker.start()
    kafka = new Kafka({
      clientId: 'rill-kafkajs-tests',
      brokers: [broker.bootstrap],
      logLevel: logLevel.NOTHING,
      connectionTimeout: 5000,
      requestTimeout: 15000,
      retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 2000 },
    })
    admin = kafka.admin()
    clients.push(admin)
    await admin.connect()
  })

  after(async () => {
    for (const c of clients) await c.disconnect().catch(() => {})
    if (broker && failed()) {
      console.error(`----- rill broker log (last lines, ${broker.logPath}) -----\n${broker.logTail(150)}`)
    }
    if (broker) await broker.close()
  })

  async function producer(opts = {}) {
    const p = kafka.producer({
      idempotent: false,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      ...opts,
    })
    clients.push(p)
    await p.connect()
    return p
  }

  async function createTopic(topic, numPartitions, configEntries = []) {
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions, replicationFactor: 1, configEntries }],
      waitForLeaders: true,
      timeout: 10_000,
    })
    assert.equal(created, true)
  }

  /** { partition: [low, high] } as numbers. */
  async function offsets(topic) {
    const result = await admin.fetchTopicOffsets(topic)
    return Object.fromEntries(result.map(p => [p.partition, [Number(p.low), Number(p.high)]]))
  }

  test('describeCluster names this broker as the single node and controller', { timeout: TEST_TIMEOUT_MS }, async () => {
    const cluster = await admin.describeCluster()
    assert.deepEqual(cluster.brokers, [{ nodeId: 1, host: '127.0.0.1', port: broker.kafkaPort }])
    assert.equal(cluster.controller, 1)
    assert.ok(cluster.clusterId, 'no cluster id')
  })

  test('createTopics, fetchTopicMetadata and the create errors', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('create')
    await createTopic(topic, 3)
    const { topics } = await admin.fetchTopicMetadata({ topics: [topic] })
    assert.equal(topics.length, 1)
    const partitions = topics[0].partitions.map(p => [p.partitionId, p.leader, p.replicas, p.isr])
    partitions.sort((a, b) => a[0] - b[0])
    assert.deepEqual(partitions, [0, 1, 2].map(i => [i, 1, [1], [1]]))
    assert.ok((await admin.listTopics()).includes(topic))

    // kafkajs reports TOPIC_ALREADY_EXISTS as `false`.
    assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], timeout: 10_000 }), false)

    await assert.rejects(
      admin.createTopics({ topics: [{ topic: newTopicName('rf3'), numPartitions: 1, replicationFactor: 3 }] }),
      e => errorTypes(e).includes('INVALID_REPLICATION_FACTOR'),
    )
    await assert.rejects(
      admin.createTopics({ topics: [{ topic: 'bad name!', numPartitions: 1, replicationFactor: 1 }] }),
      e => errorTypes(e).includes('INVALID_TOPIC_EXCEPTION'),
    )
  })

  for (const [codecName, compression] of [['none', CompressionTypes.None], ['gzip', CompressionTypes.GZIP]]) {
    test(`produce with compression ${codecName} at acks -1, 1 and 0 moves offsets by what was sent`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const topic = newTopicName(`produce-${codecName}`)
      await createTopic(topic, 3)
      const p = await producer()
      const expected = { 0: 0, 1: 0, 2: 0 }

      for (const acks of [-1, 1, 0]) {
        // Explicit partitions, so that each partition's increment is known.
        const messages = Array.from({ length: 30 }, (_, i) => ({
          partition: i % 3,
          key: i % 5 === 0 ? null : `key-${i}`,
          value: i % 7 === 0 ? null : `${codecName}-acks${acks}-${i}`.repeat(1 + (i % 4)),
          headers: { seq: String(i), codec: codecName },
        }))
        const before = await offsets(topic)
        const metadata = await p.send({ topic, acks, compression, messages })
        for (const partition of [0, 1, 2]) expected[partition] += 10

        if (acks === 0) {
          assert.deepEqual(metadata, [], 'acks=0 has no response to report')
        } else {
          // Each partition's batch starts where the partition ended before.
          const bases = Object.fromEntries(metadata.map(m => [m.partition, [m.errorCode, Number(m.baseOffset)]]))
          assert.deepEqual(bases, { 0: [0, before[0][1]], 1: [0, before[1][1]], 2: [0, before[2][1]] })
        }
        // acks=0 is fire and forget: wait (bounded) until the records are in.
        const after = await eventually(`acks=${acks} offsets`, async () => {
          const now = await offsets(topic)
          return [0, 1, 2].every(i => now[i][1] >= expected[i]) ? now : null
        })
        assert.deepEqual(after, { 0: [0, expected[0]], 1: [0, expected[1]], 2: [0, expected[2]] }, `acks=${acks}`)
      }

      // Keyed records without partitions: the partitioner spreads them; the total moves by 60.
      const keyed = Array.from({ length: 60 }, (_, i) => ({ key: `k${i}`, value: `v${i}` }))
      await p.send({ topic, acks: -1, compression, messages: keyed })
      const final = await offsets(topic)
      const total = [0, 1, 2].reduce((sum, i) => sum + final[i][1], 0)
      assert.equal(total, 90 + 60)
    })
  }

  test('an idempotent producer (idempotent: true) gets a producer id and its sends land once', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('idempotent')
    await createTopic(topic, 2)
    const p = await producer({ idempotent: true, maxInFlightRequests: 1 })
    let sent = 0
    for (let round = 0; round < 5; round++) {
      const messages = Array.from({ length: 20 }, (_, i) => ({ key: `k${i % 4}`, value: `v${round}-${i}` }))
      const results = await p.send({ topic, acks: -1, messages })
      for (const r of results) assert.equal(r.errorCode, 0)
      sent += messages.length
    }
    const marks = await offsets(topic)
    assert.equal(marks[0][1] + marks[1][1], sent)
  })

  test('fetchTopicOffsetsByTimestamp finds the first offset at or after a timestamp', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('by-timestamp')
    await createTopic(topic, 1)
    const t0 = Math.floor((Date.now() - 3_600_000) / 1000) * 1000
    const p = await producer()
    await p.send({
      topic,
      acks: -1,
      messages: Array.from({ length: 10 }, (_, i) => ({ value: `v${i}`, timestamp: String(t0 + i * 1000) })),
    })
    const at = async ts => (await admin.fetchTopicOffsetsByTimestamp(topic, ts)).map(p => [p.partition, Number(p.offset)])
    assert.deepEqual(await at(t0 - 1), [[0, 0]])
    assert.deepEqual(await at(t0 + 3500), [[0, 4]])
    assert.deepEqual(await at(t0 + 9000), [[0, 9]])
    // Past the last record kafkajs substitutes the high watermark for the broker's -1.
    assert.deepEqual(await at(t0 + 60_000), [[0, 10]])
  })

  test('describeConfigs and alterConfigs on a topic', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('configs')
    await createTopic(topic, 1)
    const describe = async () => {
      const { resources } = await admin.describeConfigs({
        resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['retention.ms'] }],
        includeSynonyms: false,
      })
      assert.equal(resources.length, 1)
      assert.equal(resources[0].errorCode, 0)
      const entry = resources[0].configEntries.find(e => e.configName === 'retention.ms')
      assert.ok(entry, 'retention.ms not described')
      return [entry.configValue, entry.isDefault, entry.configSource]
    }
    assert.deepEqual(await describe(), [RETENTION_MS_DEFAULT, true, ConfigSource.DEFAULT_CONFIG])

    await admin.alterConfigs({
      validateOnly: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '3600000' }] }],
    })
    assert.deepEqual(await describe(), ['3600000', false, ConfigSource.TOPIC_CONFIG])
  })

  test('deleteTopicRecords moves the log start offset', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('delete-records')
    await createTopic(topic, 2)
    const p = await producer()
    await p.send({ topic, acks: -1, messages: Array.from({ length: 10 }, (_, i) => ({ partition: 0, value: `v${i}` })) })
    await p.send({ topic, acks: -1, messages: Array.from({ length: 5 }, (_, i) => ({ partition: 1, value: `w${i}` })) })
    assert.deepEqual(await offsets(topic), { 0: [0, 10], 1: [0, 5] })

    // Offset -1 means "up to the high watermark".
    await admin.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: '4' }, { partition: 1, offset: '-1' }] })
    assert.deepEqual(await offsets(topic), { 0: [4, 10], 1: [5, 5] })

    const metadata = await p.send({ topic, acks: -1, messages: [{ partition: 0, value: 'after' }] })
    assert.equal(Number(metadata[0].baseOffset), 10)
  })

  test('createPartitions adds partitions that take records', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('partitions')
    await createTopic(topic, 1)
    await admin.createPartitions({ topicPartitions: [{ topic, count: 4 }], timeout: 10_000 })
    await eventually('4 partitions in metadata', async () => {
      const { topics } = await admin.fetchTopicMetadata({ topics: [topic] })
      return topics[0].partitions.length === 4
    })
    const p = await producer()
    const metadata = await p.send({ topic, acks: -1, messages: [{ partition: 3, value: 'x' }] })
    assert.deepEqual(metadata.map(m => [m.partition, Number(m.baseOffset)]), [[3, 0]])
    assert.deepEqual(await offsets(topic), { 0: [0, 0], 1: [0, 0], 2: [0, 0], 3: [0, 1] })

    await assert.rejects(
      admin.createPartitions({ topicPartitions: [{ topic, count: 2 }] }),
      e => errorTypes(e).includes('INVALID_PARTITIONS'),
    )
  })

  test('deleteTopics removes the topic from metadata', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('delete-topic')
    await createTopic(topic, 2)
    assert.ok((await admin.listTopics()).includes(topic))
    await admin.deleteTopics({ topics: [topic], timeout: 10_000 })
    await eventually('topic gone from metadata', async () => !(await admin.listTopics()).includes(topic))
  })

  test('a record larger than max.message.bytes is refused with MESSAGE_TOO_LARGE', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newTopicName('too-large')
    await createTopic(topic, 1, [{ name: 'max.message.bytes', value: '1000' }])
    const p = await producer({ retry: { retries: 0 } })
    await assert.rejects(
      p.send({ topic, acks: -1, messages: [{ value: 'x'.repeat(5000) }] }),
      e => errorTypes(e).includes('MESSAGE_TOO_LARGE'),
    )
    assert.deepEqual(await offsets(topic), { 0: [0, 0] })
    const metadata = await p.send({ topic, acks: -1, messages: [{ value: 'small' }] })
    assert.equal(Number(metadata[0].baseOffset), 0)
  })
})
