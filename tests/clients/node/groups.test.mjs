// End-to-end tests of rill's consumer groups with kafkajs: partitions shared
// by the members of a group as they join, leave and die; committed offsets
// across rebalances and broker restarts (SIGTERM and SIGKILL); the group admin
// APIs; commits the broker must refuse.
//
// What is asserted is outcomes: the partitions each member owns (its
// GROUP_JOIN event, which must agree with DescribeGroups), every (partition,
// offset) each member consumed, and what the group has committed (OffsetFetch).
// Records are produced only once a group has settled, so a correct broker gives
// exactly-once consumption with no rebalance in flight, and any duplicate or gap
// is the broker's. Waits are for those outcomes and each has a bound.
//
// The broker runs with a 100 ms initial rebalance delay and a 1 s minimum
// session timeout, so that kafkajs members can use 6 s sessions and 0.5 s
// heartbeats and the file stays short.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import net from 'node:net'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { after, before, describe } from 'node:test'

import kafkajs from 'kafkajs'

import { Broker } from './broker.mjs'
import { errorTypes, failureTracking, sleep } from './harness.mjs'

const { Kafka, AssignerProtocol, logLevel, Partitioners } = kafkajs

// Per-test bound; each test's own waits are shorter.
const TEST_TIMEOUT_MS = 120_000
const GROUP_BROKER_ARGS = ['--group-initial-rebalance-delay-ms', '100', '--group-min-session-timeout-ms', '1000']
const SESSION_TIMEOUT_MS = 6000
const CONSUMER_OPTIONS = {
  sessionTimeout: SESSION_TIMEOUT_MS,
  // How long the coordinator waits for known members to rejoin a rebalance.
  // kafkajs members notice one within a heartbeat interval plus a fetch wait.
  rebalanceTimeout: 5000,
  heartbeatInterval: 500,
  maxWaitTimeInMs: 250,
  allowAutoTopicCreation: false,
  retry: { retries: 10, initialRetryTime: 100, maxRetryTime: 1000 },
}
// A rebalance takes about a heartbeat interval and the initial delay; the bound leaves room for a slow machine.
const SETTLE_TIMEOUT_MS = 25_000
// Records produced to a settled group are fetched within a fetch wait or two.
const CONSUME_TIMEOUT_MS = 15_000
// A member killed with SIGKILL is dropped after its session timeout, then the group rebalances.
const TAKEOVER_TIMEOUT_MS = SESSION_TIMEOUT_MS + 25_000
// Kafka's error codes, for the answers read off the wire.
const ERROR = {
  NONE: 0,
  UNKNOWN_TOPIC_OR_PARTITION: 3,
  OFFSET_METADATA_TOO_LARGE: 12,
  ILLEGAL_GENERATION: 22,
  UNKNOWN_MEMBER_ID: 25,
  GROUP_ID_NOT_FOUND: 69,
  GROUP_SUBSCRIBED_TO_TOPIC: 86,
}
// Kafka's offset.metadata.max.bytes default.
const OFFSET_METADATA_MAX_BYTES = 4096

const HELPER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'group-member.mjs')

const byNumber = (a, b) => a - b
const range = n => Array.from({ length: n }, (_, i) => i)

// The broker's log is printed after the suite when any test failed.
const { test, failed } = failureTracking()

let nameSeq = 0
const newName = base => `kafkajs-groups-${base}-${process.pid}-${nameSeq++}`

/**
 * Poll `fn` until it returns a truthy value, or fail after `timeoutMs` with
 * `explain()`, which says what was last seen.
 */
async function eventually(what, fn, timeoutMs, explain = () => '') {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let last
    try {
      last = await fn()
    } catch (e) {
      // A request may fail while the broker restarts or the group rebalances; keep polling.
      if (Date.now() > deadline) assert.fail(`${what}: still failing after ${timeoutMs}ms: ${e.stack || e}\n${explain()}`)
    }
    if (last) return last
    if (Date.now() > deadline) assert.fail(`${what}: not true within ${timeoutMs}ms\n${explain()}`)
    await sleep(100)
  }
}

/** One group member as the tests see it: its joins (newest last) and the records it consumed. */
class Member {
  constructor(name) {
    this.name = name
    this.joins = []
    this.records = []
    this.crashes = []
  }

  get memberId() {
    return this.joins.at(-1)?.memberId
  }

  partitions(topic) {
    return [...(this.joins.at(-1)?.assignment?.[topic] ?? [])].sort(byNumber)
  }

  /** The records of one produce round (values `<tag>/...`). */
  consumed(tag) {
    return this.records.filter(r => r.value.startsWith(`${tag}/`))
  }

  describe(topic) {
    const crashes = this.crashes.length ? ` crashes=${JSON.stringify(this.crashes)}` : ''
    return `${this.name}: member ${this.memberId} owns [${this.partitions(topic)}], ${this.joins.length} joins, ${this.records.length} records${crashes}`
  }
}

/**
 * A kafkajs consumer in this process. With `manualCommit` it commits after each
 * batch (autoCommit off) and keeps, per partition, the last commit the broker
 * acknowledged; otherwise kafkajs auto-commits after each batch.
 */
async function startMember(kafka, name, groupId, topic, { manualCommit = false, options = {} } = {}) {
  const member = new Member(name)
  const consumer = kafka.consumer({ groupId, ...CONSUMER_OPTIONS, ...options })
  member.consumer = consumer
  member.acked = {}
  member.ackLog = []
  consumer.on(consumer.events.GROUP_JOIN, e => {
    member.joins.push({ memberId: e.payload.memberId, assignment: e.payload.memberAssignment })
  })
  consumer.on(consumer.events.HEARTBEAT, e => {
    member.generation = e.payload.groupGenerationId
    member.lastHeartbeatAt = Date.now()
  })
  consumer.on(consumer.events.CRASH, e => {
    member.crashes.push(String(e.payload.error))
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const record = (partition, message) => {
    member.records.push({ partition, offset: Number(message.offset), value: message.value.toString(), at: Date.now() })
  }
  if (manualCommit) {
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        if (batch.messages.length === 0) return
        for (const message of batch.messages) record(batch.partition, message)
        const next = Number(batch.messages.at(-1).offset) + 1
        await consumer.commitOffsets([{ topic, partition: batch.partition, offset: String(next) }])
        member.acked[batch.partition] = next
        member.ackLog.push({ partition: batch.partition, offset: next, at: Date.now() })
      },
    })
  } else {
    await consumer.run({ eachMessage: async ({ partition, message }) => record(partition, message) })
  }
  return member
}

/** A kafkajs consumer in a child process (group-member.mjs), so that it can be killed with SIGKILL. */
class ChildMember extends Member {
  constructor(name, child) {
    super(name)
    this.child = child
    this.stderr = ''
    this.exited = new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
    readline.createInterface({ input: child.stdout }).on('line', line => {
      let event
      try {
        event = JSON.parse(line)
      } catch {
        this.crashes.push(`unparsable output: ${line}`)
        return
      }
      if (event.event === 'join') this.joins.push({ memberId: event.memberId, assignment: event.assignment })
      if (event.event === 'message') this.records.push({ partition: event.partition, offset: event.offset, value: event.value })
      if (event.event === 'crash') this.crashes.push(event.error)
    })
    child.stderr.on('data', chunk => {
      this.stderr = (this.stderr + chunk).slice(-4000)
    })
  }

  static start(name, bootstrap, groupId, topic) {
    const config = { bootstrap, groupId, topic, consumer: CONSUMER_OPTIONS }
    const child = spawn(process.execPath, [HELPER, JSON.stringify(config)], { stdio: ['pipe', 'pipe', 'pipe'] })
    return new ChildMember(name, child)
  }

  async kill() {
    this.child.kill('SIGKILL')
    let timer
    const timeout = new Promise(resolve => {
      timer = setTimeout(() => resolve('timeout'), 10_000)
    })
    const status = await Promise.race([this.exited, timeout])
    clearTimeout(timer)
    assert.notEqual(status, 'timeout', `${this.name} did not exit after SIGKILL`)
    return status
  }

  describe(topic) {
    const stderr = this.stderr ? ` stderr=${JSON.stringify(this.stderr)}` : ''
    return `${super.describe(topic)}${stderr}`
  }
}

function newKafka(broker, clientId) {
  return new Kafka({
    clientId,
    brokers: [broker.bootstrap],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2000 },
  })
}

/** Partitions of `topic` in a DescribeGroups member's assignment. */
function describedPartitions(member, topic) {
  if (!member.memberAssignment || member.memberAssignment.length === 0) return []
  const decoded = AssignerProtocol.MemberAssignment.decode(member.memberAssignment)
  return [...(decoded?.assignment?.[topic] ?? [])].sort(byNumber)
}

/**
 * Wait until DescribeGroups shows `groupId` Stable with exactly `members`, each
 * with the assignment its last GROUP_JOIN reported. Resolves to { name: partitions }.
 */
async function settled(admin, groupId, topic, members, timeoutMs = SETTLE_TIMEOUT_MS) {
  let last = null
  const explain = () =>
    `last DescribeGroups: ${JSON.stringify(last && {
      state: last.state,
      protocol: last.protocol,
      members: last.members.map(m => [m.memberId, describedPartitions(m, topic)]),
    })}\nmembers here:\n  ${members.map(m => m.describe(topic)).join('\n  ')}`
  return eventually(`group ${groupId} Stable with ${members.map(m => m.name)}`, async () => {
    const { groups } = await admin.describeGroups([groupId])
    last = groups[0]
    if (last.state !== 'Stable' || last.members.length !== members.length) return null
    const owners = {}
    for (const described of last.members) {
      const member = members.find(m => m.memberId === described.memberId)
      if (!member) return null
      const partitions = describedPartitions(described, topic)
      if (JSON.stringify(partitions) !== JSON.stringify(member.partitions(topic))) return null
      owners[member.name] = partitions
    }
    return owners
  }, timeoutMs, explain)
}

/** Every partition of the topic is owned by exactly one member. */
function assertEachPartitionOnce(owners, numPartitions) {
  const all = Object.values(owners).flat().sort(byNumber)
  assert.deepEqual(all, range(numPartitions), `each partition assigned exactly once: ${JSON.stringify(owners)}`)
}

const ownerOf = (owners, partition) => Object.keys(owners).find(name => owners[name].includes(partition))

/** { partition: high watermark } as numbers. */
async function highWatermarks(admin, topic) {
  const result = await admin.fetchTopicOffsets(topic)
  return Object.fromEntries(result.map(p => [p.partition, Number(p.high)]))
}

/** { partition: committed offset } as numbers (-1: none). */
async function committed(admin, groupId, topic) {
  const [result] = await admin.fetchOffsets({ groupId, topics: [topic] })
  return Object.fromEntries(result.partitions.map(p => [p.partition, Number(p.offset)]))
}

async function waitCommitted(admin, groupId, topic, expected, timeoutMs = CONSUME_TIMEOUT_MS) {
  let last
  await eventually(`group ${groupId} commits ${JSON.stringify(expected)}`, async () => {
    last = await committed(admin, groupId, topic)
    return JSON.stringify(last) === JSON.stringify(expected)
  }, timeoutMs, () => `last committed: ${JSON.stringify(last)}`)
}

/**
 * Produce `perPartition` records with values `<tag>/<partition>/<i>` to each
 * of `partitions`, and return them with the offsets they must have got.
 */
async function produceRound(producer, admin, topic, tag, partitions, perPartition) {
  const before = await highWatermarks(admin, topic)
  const expected = partitions.flatMap(partition =>
    range(perPartition).map(i => ({ partition, offset: before[partition] + i, value: `${tag}/${partition}/${i}` })),
  )
  await producer.send({ topic, acks: -1, messages: expected.map(r => ({ partition: r.partition, value: r.value })) })
  const afterSend = await highWatermarks(admin, topic)
  for (const partition of partitions) {
    assert.equal(afterSend[partition], before[partition] + perPartition, `high watermark of partition ${partition} after ${tag}`)
  }
  return expected
}

const recordKey = r => `${r.partition}@${r.offset}`
const byPartitionOffset = (a, b) => a.partition - b.partition || a.offset - b.offset

/**
 * Wait until `expected` (one produce round) has been consumed by `members`,
 * then assert that each record was consumed exactly once, with its value, and
 * (given `owners`) by the member that owns its partition.
 */
async function assertConsumedOnce(what, topic, members, tag, expected, owners, timeoutMs = CONSUME_TIMEOUT_MS) {
  const consumed = () => members.flatMap(m => m.consumed(tag).map(r => ({ ...r, by: m.name })))
  await eventually(`${what}: all ${expected.length} records of ${tag} consumed`, () => {
    const seen = new Set(consumed().map(recordKey))
    return expected.every(r => seen.has(recordKey(r)))
  }, timeoutMs, () => {
    const seen = new Set(consumed().map(recordKey))
    const missing = expected.filter(r => !seen.has(recordKey(r))).map(recordKey)
    return `missing: ${missing}\n  ${members.map(m => m.describe(topic)).join('\n  ')}`
  })
  const got = consumed().sort(byPartitionOffset)
  const want = expected.map(r => ({ ...r, by: owners ? ownerOf(owners, r.partition) : undefined }))
  const strip = rs => rs.map(r => ({ partition: r.partition, offset: r.offset, value: r.value, ...(owners ? { by: r.by } : {}) }))
  assert.deepEqual(strip(got), strip(want), `${what}: each record of ${tag} consumed exactly once${owners ? ' by its owner' : ''}`)
}

/**
 * With manual commits, a record may be consumed twice only while no commit past
 * it has been acknowledged: once the broker has acknowledged committing offset
 * `o` of a partition, no member may consume a record below `o` again, across
 * rebalances and restarts.
 */
function assertNoCommittedRecordConsumedAgain(members) {
  const acks = members.flatMap(m => m.ackLog)
  const consumptions = members.flatMap(m => m.records.map(r => ({ ...r, by: m.name }))).sort((x, y) => x.at - y.at)
  const seen = new Set()
  const violations = []
  for (const c of consumptions) {
    const key = recordKey(c)
    if (seen.has(key)) {
      const ack = acks.find(a => a.partition === c.partition && a.offset > c.offset && a.at <= c.at)
      if (ack) violations.push(`${key} consumed again by ${c.by} after a commit of offset ${ack.offset} was acknowledged`)
    }
    seen.add(key)
  }
  assert.deepEqual(violations, [], 'committed records consumed again')
}

// ---- Raw requests, for commits kafkajs would not send.

function str(s) {
  const bytes = Buffer.from(s, 'utf8')
  const len = Buffer.alloc(2)
  len.writeInt16BE(bytes.length)
  return Buffer.concat([len, bytes])
}
const int16 = v => { const b = Buffer.alloc(2); b.writeInt16BE(v); return b }
const int32 = v => { const b = Buffer.alloc(4); b.writeInt32BE(v); return b }
const int64 = v => { const b = Buffer.alloc(8); b.writeBigInt64BE(BigInt(v)); return b }

/** Send one request (header v1) and resolve to its response body (after the correlation id). */
async function rawRequest(port, apiKey, apiVersion, body) {
  const correlationId = 7
  const header = Buffer.concat([int16(apiKey), int16(apiVersion), int32(correlationId), str('rill-raw-test')])
  const frame = Buffer.concat([int32(header.length + body.length), header, body])
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let received = Buffer.alloc(0)
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`no answer to api ${apiKey} v${apiVersion} within 10s`))
    }, 10_000)
    socket.on('error', e => {
      clearTimeout(timer)
      reject(e)
    })
    socket.on('connect', () => socket.write(frame))
    socket.on('data', chunk => {
      received = Buffer.concat([received, chunk])
      if (received.length >= 4 && received.length >= 4 + received.readInt32BE(0)) {
        clearTimeout(timer)
        socket.destroy()
        assert.equal(received.readInt32BE(4), correlationId)
        resolve(received.subarray(8, 4 + received.readInt32BE(0)))
      }
    })
  })
}

/** OffsetCommit v2; resolves to { '<topic>/<partition>': errorCode }. */
async function rawOffsetCommit(port, { groupId, generationId, memberId, topic, partitions }) {
  const body = Buffer.concat([
    str(groupId),
    int32(generationId),
    str(memberId),
    int64(-1), // retention time: the broker's
    int32(1),
    str(topic),
    int32(partitions.length),
    ...partitions.flatMap(p => [int32(p.partition), int64(p.offset), p.metadata == null ? int16(-1) : str(p.metadata)]),
  ])
  const response = await rawRequest(port, 8, 2, body)
  let pos = 0
  const readString = () => {
    const len = response.readInt16BE(pos)
    pos += 2
    const s = response.toString('utf8', pos, pos + len)
    pos += len
    return s
  }
  const errors = {}
  const topics = response.readInt32BE(pos)
  pos += 4
  for (let t = 0; t < topics; t++) {
    const name = readString()
    const count = response.readInt32BE(pos)
    pos += 4
    for (let i = 0; i < count; i++) {
      errors[`${name}/${response.readInt32BE(pos)}`] = response.readInt16BE(pos + 4)
      pos += 6
    }
  }
  return errors
}

/** OffsetDelete v0; resolves to { error: top-level code, '<topic>/<partition>': code }. */
async function rawOffsetDelete(port, groupId, topic, partitions) {
  const body = Buffer.concat([str(groupId), int32(1), str(topic), int32(partitions.length), ...partitions.map(int32)])
  const response = await rawRequest(port, 47, 0, body)
  const result = { error: response.readInt16BE(0) }
  let pos = 6 // error code, throttle time
  const topics = response.readInt32BE(pos)
  pos += 4
  for (let t = 0; t < topics; t++) {
    const len = response.readInt16BE(pos)
    const name = response.toString('utf8', pos + 2, pos + 2 + len)
    pos += 2 + len
    const count = response.readInt32BE(pos)
    pos += 4
    for (let i = 0; i < count; i++) {
      result[`${name}/${response.readInt32BE(pos)}`] = response.readInt16BE(pos + 4)
      pos += 6
    }
  }
  return result
}

describe('consumer groups with kafkajs', { timeout: 6 * TEST_TIMEOUT_MS }, () => {
  let broker
  let kafka
  let admin
  let producer
  const disconnectables = []
  const children = []

  before(async () => {
    broker = await Broker.start({ extraArgs: GROUP_BROKER_ARGS })
    kafka = newKafka(broker, 'rill-kafkajs-group-tests')
    admin = kafka.admin()
    disconnectables.push(admin)
    await admin.connect()
    producer = kafka.producer({ idempotent: false, allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner })
    disconnectables.push(producer)
    await producer.connect()
  })

  after(async () => {
    for (const child of children) child.child.kill('SIGKILL')
    for (const c of disconnectables) await c.disconnect().catch(() => {})
    if (broker && failed()) {
      console.error(`----- rill broker log (last lines, ${broker.logPath}) -----\n${broker.logTail(200)}`)
    }
    if (broker) await broker.close()
  })

  async function member(name, groupId, topic, opts) {
    const m = await startMember(kafka, name, groupId, topic, opts)
    disconnectables.push(m.consumer)
    return m
  }

  async function createTopic(topic, numPartitions) {
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 10_000,
    })
    assert.equal(created, true)
  }

  test('three members share six partitions; a fourth joins; one leaves cleanly', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('share')
    const groupId = newName('share-group')
    await createTopic(topic, 6)
    const all = range(6)

    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(name => member(name, groupId, topic)))
    let owners = await settled(admin, groupId, topic, [a, b, c])
    assertEachPartitionOnce(owners, 6)
    for (const m of [a, b, c]) assert.ok(owners[m.name].length > 0, `${m.name} owns no partition: ${JSON.stringify(owners)}`)
    const r1 = await produceRound(producer, admin, topic, 'r1', all, 5)
    await assertConsumedOnce('three members', topic, [a, b, c], 'r1', r1, owners)
    await waitCommitted(admin, groupId, topic, Object.fromEntries(all.map(p => [p, 5])))

    const d = await member('d', groupId, topic)
    owners = await settled(admin, groupId, topic, [a, b, c, d])
    assertEachPartitionOnce(owners, 6)
    for (const m of [a, b, c, d]) assert.ok(owners[m.name].length > 0, `${m.name} owns no partition: ${JSON.stringify(owners)}`)
    const r2 = await produceRound(producer, admin, topic, 'r2', all, 5)
    await assertConsumedOnce('four members', topic, [a, b, c, d], 'r2', r2, owners)
    await waitCommitted(admin, groupId, topic, Object.fromEntries(all.map(p => [p, 10])))

    // A clean leave (LeaveGroup): b's partitions go to the others at once, without waiting for its session to expire.
    const left = owners.b
    await b.consumer.disconnect()
    owners = await settled(admin, groupId, topic, [a, c, d])
    assertEachPartitionOnce(owners, 6)
    for (const partition of left) assert.ok(ownerOf(owners, partition), `partition ${partition} of b has no new owner`)
    const r3 = await produceRound(producer, admin, topic, 'r3', all, 5)
    await assertConsumedOnce('after b left', topic, [a, b, c, d], 'r3', r3, owners)
    await waitCommitted(admin, groupId, topic, Object.fromEntries(all.map(p => [p, 15])))

    // Across all rounds and rebalances: every record consumed exactly once.
    const everything = [a, b, c, d].flatMap(m => m.records).sort(byPartitionOffset)
    assert.deepEqual(everything.map(recordKey), all.flatMap(p => range(15).map(o => `${p}@${o}`)))
  })

  test('a member killed with SIGKILL loses its partitions after the session timeout', { timeout: TEST_TIMEOUT_MS }, async t => {
    const topic = newName('sigkill')
    const groupId = newName('sigkill-group')
    await createTopic(topic, 6)
    const all = range(6)

    const doomed = ChildMember.start('child', broker.bootstrap, groupId, topic)
    children.push(doomed)
    const [a, b] = await Promise.all(['a', 'b'].map(name => member(name, groupId, topic)))
    let owners = await settled(admin, groupId, topic, [a, b, doomed])
    assertEachPartitionOnce(owners, 6)
    const orphaned = owners.child
    assert.ok(orphaned.length > 0, `the child process owns no partition: ${JSON.stringify(owners)}`)
    const r1 = await produceRound(producer, admin, topic, 'r1', all, 3)
    await assertConsumedOnce('with the child', topic, [a, b, doomed], 'r1', r1, owners)
    // The child has committed what it consumed, so whoever takes its partitions starts after it.
    await waitCommitted(admin, groupId, topic, Object.fromEntries(all.map(p => [p, 3])))

    const status = await doomed.kill()
    assert.equal(status.signal, 'SIGKILL')
    const killedAt = Date.now()
    // Records on the dead member's partitions can only be consumed once the group has moved them.
    const r2 = await produceRound(producer, admin, topic, 'r2', orphaned, 4)
    await assertConsumedOnce('after SIGKILL', topic, [a, b, doomed], 'r2', r2, null, TAKEOVER_TIMEOUT_MS)
    t.diagnostic(`partitions of the killed member consumed again ${Date.now() - killedAt} ms after SIGKILL (session timeout ${SESSION_TIMEOUT_MS} ms)`)
    owners = await settled(admin, groupId, topic, [a, b])
    assertEachPartitionOnce(owners, 6)
    // Consumed by the new owners, and nothing by the dead one.
    const r2Owners = Object.fromEntries(orphaned.map(p => [p, ownerOf(owners, p)]))
    for (const r of [a, b].flatMap(m => m.consumed('r2').map(x => ({ ...x, by: m.name })))) {
      assert.equal(r.by, r2Owners[r.partition], `record ${recordKey(r)} consumed by ${r.by}, not the owner`)
    }

    const r3 = await produceRound(producer, admin, topic, 'r3', all, 2)
    await assertConsumedOnce('two survivors', topic, [a, b], 'r3', r3, owners)
    const everything = [a, b, doomed].flatMap(m => m.records).sort(byPartitionOffset)
    const ends = await highWatermarks(admin, topic)
    assert.deepEqual(everything.map(recordKey), all.flatMap(p => range(ends[p]).map(o => `${p}@${o}`)))
  })

  test('manual commits: resumed exactly at the committed offsets across a rebalance and SIGTERM and SIGKILL restarts', { timeout: TEST_TIMEOUT_MS }, async () => {
    // A broker of its own, since this test restarts it.
    const own = await Broker.start({ extraArgs: GROUP_BROKER_ARGS })
    const ownKafka = newKafka(own, 'rill-kafkajs-commit-tests')
    const ownAdmin = ownKafka.admin()
    const ownProducer = ownKafka.producer({ idempotent: false, allowAutoTopicCreation: false })
    const members = []
    try {
      await ownAdmin.connect()
      await ownProducer.connect()
      const topic = newName('commits')
      const groupId = newName('commits-group')
      await ownAdmin.createTopics({ topics: [{ topic, numPartitions: 4, replicationFactor: 1 }], waitForLeaders: true, timeout: 10_000 })
      const all = range(4)
      const at = offset => Object.fromEntries(all.map(p => [p, offset]))
      const start = async name => {
        const m = await startMember(ownKafka, name, groupId, topic, { manualCommit: true })
        members.push(m)
        return m
      }
      const acked = ms => {
        const merged = {}
        for (const m of ms) for (const [p, o] of Object.entries(m.acked)) merged[p] = Math.max(merged[p] ?? -1, o)
        return merged
      }
      const waitAcked = async (ms, offset) => {
        await eventually(`commits acknowledged up to ${offset}`, () => JSON.stringify(acked(ms)) === JSON.stringify(at(offset)),
          CONSUME_TIMEOUT_MS, () => `acknowledged: ${JSON.stringify(acked(ms))}`)
      }

      // One member consumes what is there, committing after each batch.
      const r1 = await produceRound(ownProducer, ownAdmin, topic, 'r1', all, 10)
      const a = await start('a')
      let owners = await settled(ownAdmin, groupId, topic, [a])
      await assertConsumedOnce('a alone', topic, [a], 'r1', r1, owners)
      await waitAcked([a], 10)
      assert.deepEqual(await committed(ownAdmin, groupId, topic), at(10))

      // A second member joins: whoever now owns a partition starts at its commit.
      const b = await start('b')
      owners = await settled(ownAdmin, groupId, topic, [a, b])
      assertEachPartitionOnce(owners, 4)
      const r2 = await produceRound(ownProducer, ownAdmin, topic, 'r2', all, 10)
      await assertConsumedOnce('a and b', topic, [a, b], 'r2', r2, owners)
      await waitAcked([a, b], 20)
      await a.consumer.disconnect()
      await b.consumer.disconnect()

      // Records that nobody has consumed yet wait across a SIGTERM restart.
      const r3 = await produceRound(ownProducer, ownAdmin, topic, 'r3', all, 10)
      const stopped = await own.restart()
      assert.deepEqual(stopped, { code: 0, signal: null }, 'clean exit on SIGTERM')
      assert.deepEqual(await eventually('OffsetFetch after SIGTERM restart', () => committed(ownAdmin, groupId, topic), SETTLE_TIMEOUT_MS), at(20))
      const a2 = await start('a2')
      owners = await settled(ownAdmin, groupId, topic, [a2])
      // Exactly r3: nothing committed before the restart is read again, nothing after it is skipped.
      await assertConsumedOnce('a2 after SIGTERM restart', topic, [a2], 'r3', r3, owners)
      assert.deepEqual(a2.records.map(recordKey).sort(), r3.map(recordKey).sort(), 'a2 consumed exactly r3')
      await waitAcked([a2], 30)

      const b2 = await start('b2')
      owners = await settled(ownAdmin, groupId, topic, [a2, b2])
      assertEachPartitionOnce(owners, 4)
      const r4 = await produceRound(ownProducer, ownAdmin, topic, 'r4', all, 10)
      await assertConsumedOnce('a2 and b2', topic, [a2, b2], 'r4', r4, owners)
      await waitAcked([a2, b2], 40)

      // SIGKILL with the members connected: every acknowledged commit survives.
      await own.restartAfterKill()
      const restartedAt = Date.now()
      assert.deepEqual(await eventually('OffsetFetch after SIGKILL restart', () => committed(ownAdmin, groupId, topic), SETTLE_TIMEOUT_MS), at(40))
      // The members reconnect by themselves. The broker loads the group as it was,
      // but a kafkajs member that met the dead broker may crash, leave and join
      // again as a new member (its own restart): wait until both have heartbeated
      // since, and then for the group to settle.
      await eventually('both members heartbeat after the SIGKILL restart', () => [a2, b2].every(m => m.lastHeartbeatAt > restartedAt),
        2 * SETTLE_TIMEOUT_MS, () => [a2, b2].map(m => m.describe(topic)).join('\n'))
      owners = await settled(ownAdmin, groupId, topic, [a2, b2], 2 * SETTLE_TIMEOUT_MS)
      assertEachPartitionOnce(owners, 4)
      const r5 = await produceRound(ownProducer, ownAdmin, topic, 'r5', all, 10)
      // Who consumes what may still move if a member restarts late; what must hold
      // is that nothing is skipped and nothing committed is read again (below).
      await eventually('r5 consumed', () => {
        const seen = new Set([a2, b2].flatMap(m => m.consumed('r5')).map(recordKey))
        return r5.every(r => seen.has(recordKey(r)))
      }, CONSUME_TIMEOUT_MS, () => [a2, b2].map(m => m.describe(topic)).join('\n'))
      await waitAcked([a2, b2], 50)
      await a2.consumer.disconnect()
      await b2.consumer.disconnect()
      assert.deepEqual(await committed(ownAdmin, groupId, topic), at(50))

      // Across every phase: each produced (partition, offset) consumed, nothing else,
      // and no record consumed again once a commit past it had been acknowledged.
      const distinct = [...new Set(members.flatMap(m => m.records).sort(byPartitionOffset).map(recordKey))]
      assert.deepEqual(distinct, all.flatMap(p => range(50).map(o => `${p}@${o}`)))
      assertNoCommittedRecordConsumedAgain(members)
      // Before the SIGKILL (r1..r4) every record was consumed exactly once.
      const beforeKill = members.flatMap(m => m.records).filter(r => r.offset < 40).sort(byPartitionOffset)
      assert.deepEqual(beforeKill.map(recordKey), all.flatMap(p => range(40).map(o => `${p}@${o}`)))
    } catch (e) {
      console.error(`----- rill broker log (restart test, last lines) -----\n${own.logTail(200)}`)
      throw e
    } finally {
      for (const m of members) await m.consumer.disconnect().catch(() => {})
      await ownProducer.disconnect().catch(() => {})
      await ownAdmin.disconnect().catch(() => {})
      await own.close()
    }
  })

  test('admin: listGroups, describeGroups, fetchOffsets and lag, resetOffsets, setOffsets, deleteGroups', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('admin')
    const groupId = newName('admin-group')
    await createTopic(topic, 3)
    const all = range(3)
    const r1 = all.flatMap(p => range(4 + p).map(i => ({ partition: p, value: `r1/${p}/${i}` })))
    await producer.send({ topic, acks: -1, messages: r1 })

    const [a, b] = await Promise.all(['a', 'b'].map(name => member(name, groupId, topic)))
    const owners = await settled(admin, groupId, topic, [a, b])
    assertEachPartitionOnce(owners, 3)
    await eventually('r1 consumed', () => a.records.length + b.records.length >= r1.length, CONSUME_TIMEOUT_MS)
    await waitCommitted(admin, groupId, topic, { 0: 4, 1: 5, 2: 6 })

    const { groups: listed } = await admin.listGroups()
    assert.deepEqual(listed.filter(g => g.groupId === groupId), [{ groupId, protocolType: 'consumer' }])

    const { groups: [described] } = await admin.describeGroups([groupId])
    assert.equal(described.errorCode, 0)
    assert.equal(described.groupId, groupId)
    assert.equal(described.state, 'Stable')
    assert.equal(described.protocolType, 'consumer')
    assert.equal(described.protocol, 'RoundRobinAssigner')
    assert.deepEqual(described.members.map(m => m.memberId).sort(), [a.memberId, b.memberId].sort())
    for (const m of described.members) {
      const who = m.memberId === a.memberId ? a : b
      assert.equal(m.clientId, 'rill-kafkajs-group-tests')
      assert.ok(m.clientHost.includes('127.0.0.1'), `clientHost ${m.clientHost}`)
      assert.deepEqual(describedPartitions(m, topic), owners[who.name])
      // The member's subscription, as it sent it in JoinGroup.
      assert.deepEqual(AssignerProtocol.MemberMetadata.decode(m.memberMetadata).topics, [topic])
    }

    await assert.rejects(admin.deleteGroups([groupId]), e => errorTypes(e).includes('NON_EMPTY_GROUP'))
    assert.equal((await admin.describeGroups([groupId])).groups[0].state, 'Stable', 'a refused delete leaves the group alone')
    assert.deepEqual(await rawOffsetDelete(broker.kafkaPort, groupId, topic, [0]), { error: ERROR.NONE, [`${topic}/0`]: ERROR.GROUP_SUBSCRIBED_TO_TOPIC })
    assert.deepEqual(await committed(admin, groupId, topic), { 0: 4, 1: 5, 2: 6 })

    await a.consumer.disconnect()
    await b.consumer.disconnect()
    await eventually('group Empty after both left', async () => {
      const { groups: [g] } = await admin.describeGroups([groupId])
      return g.state === 'Empty' && g.members.length === 0
    }, SETTLE_TIMEOUT_MS)
    // An empty group is still listed: its offsets are kept.
    assert.ok((await admin.listGroups()).groups.some(g => g.groupId === groupId))

    // Lag = log end - committed.
    await producer.send({ topic, acks: -1, messages: all.flatMap(p => range(2 * p + 1).map(i => ({ partition: p, value: `r2/${p}/${i}` }))) })
    const ends = await highWatermarks(admin, topic)
    const commits = await committed(admin, groupId, topic)
    assert.deepEqual(ends, { 0: 5, 1: 8, 2: 11 })
    assert.deepEqual(commits, { 0: 4, 1: 5, 2: 6 })
    assert.deepEqual(Object.fromEntries(all.map(p => [p, ends[p] - commits[p]])), { 0: 1, 1: 3, 2: 5 })

    // setOffsets and resetOffsets join the group for a moment to commit (kafkajs
    // checks that the group is empty first). resetOffsets earliest commits
    // kafkajs's "earliest" marker, -2, which Kafka stores as it stores any offset.
    await admin.resetOffsets({ groupId, topic, earliest: true })
    assert.deepEqual(await committed(admin, groupId, topic), { 0: -2, 1: -2, 2: -2 })
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 1, offset: '7' }, { partition: 2, offset: '9' }] })
    assert.deepEqual(await committed(admin, groupId, topic), { 0: -2, 1: 7, 2: 9 })

    // A member that joins now starts where resetOffsets and setOffsets put the group.
    const c = await member('c', groupId, topic)
    await settled(admin, groupId, topic, [c])
    const want = all.flatMap(p => range(ends[p]).filter(o => o >= { 0: 0, 1: 7, 2: 9 }[p]).map(o => `${p}@${o}`))
    await eventually('c consumed from the set offsets', () => c.records.length >= want.length, CONSUME_TIMEOUT_MS, () => c.describe(topic))
    assert.deepEqual(c.records.sort(byPartitionOffset).map(recordKey), want)
    await waitCommitted(admin, groupId, topic, ends)
    await c.consumer.disconnect()

    await eventually('group Empty after c left', async () => (await admin.describeGroups([groupId])).groups[0].state === 'Empty', SETTLE_TIMEOUT_MS)

    // OffsetDelete (kafkajs has no call for it): refused for a topic that live members
    // subscribe to, done on an empty group, GROUP_ID_NOT_FOUND for an unknown group.
    assert.deepEqual(await rawOffsetDelete(broker.kafkaPort, groupId, topic, [0]), { error: ERROR.NONE, [`${topic}/0`]: ERROR.NONE })
    assert.deepEqual(await committed(admin, groupId, topic), { 0: -1, 1: ends[1], 2: ends[2] })
    assert.deepEqual(await rawOffsetDelete(broker.kafkaPort, newName('no-such-group'), topic, [0]), { error: ERROR.GROUP_ID_NOT_FOUND })

    const deleted = await admin.deleteGroups([groupId])
    assert.deepEqual(deleted.map(r => [r.groupId, r.errorCode]), [[groupId, 0]])
    assert.ok(!(await admin.listGroups()).groups.some(g => g.groupId === groupId), 'deleted group still listed')
    assert.deepEqual(await committed(admin, groupId, topic), { 0: -1, 1: -1, 2: -1 }, 'offsets of a deleted group')
    assert.equal((await admin.describeGroups([groupId])).groups[0].state, 'Dead')

    await assert.rejects(admin.deleteGroups([newName('no-such-group')]), e => errorTypes(e).includes('GROUP_ID_NOT_FOUND'))
  })

  test('bad commits get their Kafka errors and the group keeps working', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('bad')
    const groupId = newName('bad-group')
    await createTopic(topic, 2)
    const all = range(2)
    const r1 = await produceRound(producer, admin, topic, 'r1', all, 5)
    // kafkajs retries a commit refused with a retriable error (UNKNOWN_TOPIC_OR_PARTITION
    // is one) as often as the consumer's retry allows: keep that short here.
    const a = await member('a', groupId, topic, { options: { retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 300 } } })
    let owners = await settled(admin, groupId, topic, [a])
    await assertConsumedOnce('a', topic, [a], 'r1', r1, owners)
    await waitCommitted(admin, groupId, topic, { 0: 5, 1: 5 })
    await eventually('a heartbeats', () => a.generation !== undefined, SETTLE_TIMEOUT_MS)
    const { generation, memberId } = a

    // Through kafkajs: a commit to a partition the topic does not have.
    await assert.rejects(
      a.consumer.commitOffsets([{ topic, partition: 99, offset: '1' }]),
      e => errorTypes(e).includes('UNKNOWN_TOPIC_OR_PARTITION'),
    )

    const commit = (partitions, fields = {}) =>
      rawOffsetCommit(broker.kafkaPort, { groupId, generationId: generation, memberId, topic, partitions, ...fields })
    // A good partition and an unknown one in one request: each gets its own answer.
    assert.deepEqual(
      await commit([{ partition: 0, offset: 5, metadata: 'raw' }, { partition: 99, offset: 1 }]),
      { [`${topic}/0`]: ERROR.NONE, [`${topic}/99`]: ERROR.UNKNOWN_TOPIC_OR_PARTITION },
    )
    const [fetched] = await admin.fetchOffsets({ groupId, topics: [topic] })
    assert.deepEqual(fetched.partitions.find(p => p.partition === 0), { partition: 0, offset: '5', metadata: 'raw' })
    const missingTopic = newName('missing')
    assert.deepEqual(
      await commit([{ partition: 0, offset: 1 }], { topic: missingTopic }),
      { [`${missingTopic}/0`]: ERROR.UNKNOWN_TOPIC_OR_PARTITION },
    )
    assert.deepEqual(await commit([{ partition: 1, offset: 2 }], { memberId: 'no-such-member' }), { [`${topic}/1`]: ERROR.UNKNOWN_MEMBER_ID })
    assert.deepEqual(await commit([{ partition: 1, offset: 2 }], { generationId: generation - 1 }), { [`${topic}/1`]: ERROR.ILLEGAL_GENERATION })
    assert.deepEqual(await commit([{ partition: 1, offset: 2 }], { generationId: generation + 1 }), { [`${topic}/1`]: ERROR.ILLEGAL_GENERATION })
    assert.deepEqual(
      await commit([{ partition: 1, offset: 2, metadata: 'm'.repeat(OFFSET_METADATA_MAX_BYTES + 1) }]),
      { [`${topic}/1`]: ERROR.OFFSET_METADATA_TOO_LARGE },
    )
    // None of the refused commits moved anything.
    assert.deepEqual(await committed(admin, groupId, topic), { 0: 5, 1: 5 })

    // The group is as it was: same member, same generation, still consuming and committing.
    owners = await settled(admin, groupId, topic, [a])
    assert.equal(a.memberId, memberId)
    const r2 = await produceRound(producer, admin, topic, 'r2', all, 3)
    await assertConsumedOnce('a after the bad commits', topic, [a], 'r2', r2, owners)
    await waitCommitted(admin, groupId, topic, { 0: 8, 1: 8 })
    assert.equal(a.generation, generation, 'no rebalance')

    // setOffsets needs an empty group (kafkajs checks), and kafkajs itself drops a
    // partition the topic does not have: nothing is committed for it, the rest is.
    await a.consumer.disconnect()
    await eventually('group Empty', async () => (await admin.describeGroups([groupId])).groups[0].state === 'Empty', SETTLE_TIMEOUT_MS)
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 99, offset: '1' }, { partition: 1, offset: '6' }] })
    assert.deepEqual(await committed(admin, groupId, topic), { 0: 8, 1: 6 })
    const b = await member('b', groupId, topic)
    owners = await settled(admin, groupId, topic, [b])
    await eventually('b consumed partition 1 from 6', () => b.records.length >= 2, CONSUME_TIMEOUT_MS, () => b.describe(topic))
    assert.deepEqual(b.records.map(recordKey).sort(), ['1@6', '1@7'])
  })
})
