// Kafka transactions with kafkajs: a transactional producer's commit and abort
// as read by a read_committed consumer (readUncommitted: false, kafkajs's
// default) and a read_uncommitted one, offsets sent to a transaction
// (consume-transform-produce), and a zombie producer fenced by a second
// producer with the same transactionalId.
//
// Kafka's semantics, as a real Kafka gives them: a read_committed consumer gets
// a transaction's records only after its commit, never those of an aborted
// one; every commit or abort writes one control record (marker) per partition,
// which takes an offset that no consumer delivers; the markers are written
// after EndTxn answered, so waits for them poll with a bound.
//
// kafkajs consumes only through groups: each read here is a fresh group reading
// from the beginning (the broker runs with a 100 ms initial rebalance delay).

import assert from 'node:assert/strict'
import { after, before, describe } from 'node:test'

import kafkajs from 'kafkajs'

import { Broker } from './broker.mjs'
import { errorTypes, failureTracking, sleep } from './harness.mjs'

const { Kafka, logLevel } = kafkajs

const TEST_TIMEOUT_MS = 90_000
const GROUP_BROKER_ARGS = ['--group-initial-rebalance-delay-ms', '100', '--group-min-session-timeout-ms', '1000']
// How long a read may take to see what it expects, and how long it then keeps
// reading to catch records that should not be there.
const READ_TIMEOUT_MS = 30_000
const QUIET_MS = 1500
// How kafkajs reports a fenced producer: old request versions carry
// INVALID_PRODUCER_EPOCH, new ones PRODUCER_FENCED.
const FENCED = ['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED']


// The broker's log is printed after the suite when any test failed.
const { test, failed } = failureTracking()

let nameSeq = 0
const newName = base => `kafkajs-txn-${base}-${process.pid}-${nameSeq++}`

async function eventually(what, fn, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) assert.fail(`${what}: not true within ${timeoutMs}ms; last: ${last?.stack ?? last}`)
    await sleep(100)
  }
}

/** `n` messages round-robin over `partitions`, values `prefix-i`. */
function messages(prefix, n, partitions) {
  return Array.from({ length: n }, (_, i) => ({ partition: i % partitions, key: `k${i}`, value: `${prefix}-${i}` }))
}

/** { partition: [[offset, value], ...] } from a transaction's send results (baseOffset per partition). */
function positions(sent, metadata) {
  const base = Object.fromEntries(metadata.map(m => [m.partition, Number(m.baseOffset)]))
  const seen = {}
  const out = {}
  for (const m of sent) {
    const i = seen[m.partition] = (seen[m.partition] ?? -1) + 1
    ;(out[m.partition] ??= []).push([base[m.partition] + i, m.value])
  }
  return out
}

function merge(...parts) {
  const out = {}
  for (const part of parts) {
    for (const [p, entries] of Object.entries(part)) (out[p] ??= []).push(...entries)
  }
  for (const p of Object.keys(out)) out[p].sort((a, b) => a[0] - b[0])
  return out
}

describe('kafkajs transactions against rill', { timeout: 6 * TEST_TIMEOUT_MS }, () => {
  let broker
  let kafka
  let admin
  const clients = []

  before(async () => {
    broker = await Broker.start({ extraArgs: GROUP_BROKER_ARGS })
    kafka = new Kafka({
      clientId: 'rill-kafkajs-txn-tests',
      brokers: [broker.bootstrap],
      logLevel: logLevel.NOTHING,
      connectionTimeout: 5000,
      requestTimeout: 15000,
      retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2000 },
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

  async function createTopic(topic, numPartitions) {
    assert.equal(await admin.createTopics({
      topics: [{ topic, numPartitions, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 10_000,
    }), true)
  }

  async function txnProducer(transactionalId, opts = {}) {
    const p = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1, ...opts })
    clients.push(p)
    await p.connect()
    return p
  }

  /** { partition: [low, high] } from ListOffsets (kafkajs's admin asks read_uncommitted). */
  async function offsets(topic) {
    const result = await admin.fetchTopicOffsets(topic)
    return Object.fromEntries(result.map(p => [p.partition, [Number(p.low), Number(p.high)]]))
  }

  /**
   * Read `topic` from the beginning in a fresh group until `expected` records
   * arrived (bounded), then QUIET_MS more. Returns { partition: [[offset, value], ...] }
   * in delivery order.
   */
  async function read(topic, expected, { readUncommitted }) {
    const consumer = kafka.consumer({
      groupId: newName('reader'),
      readUncommitted,
      sessionTimeout: 6000,
      heartbeatInterval: 500,
      maxWaitTimeInMs: 100,
      allowAutoTopicCreation: false,
    })
    clients.push(consumer)
    const out = {}
    let n = 0
    try {
      await consumer.connect()
      await consumer.subscribe({ topic, fromBeginning: true })
      await consumer.run({
        eachMessage: async ({ partition, message }) => {
          ;(out[partition] ??= []).push([Number(message.offset), message.value.toString()])
          n++
        },
      })
      const deadline = Date.now() + READ_TIMEOUT_MS
      while (n < expected && Date.now() < deadline) await sleep(50)
      await sleep(QUIET_MS)
      return out
    } finally {
      await consumer.disconnect()
    }
  }

  test('a committed transaction is read by read_committed and read_uncommitted consumers', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('commit')
    await createTopic(topic, 2)
    const p = await txnProducer(newName('commit-id'))
    const txn = await p.transaction()
    const sent = messages('committed', 20, 2)
    const expected = positions(sent, await txn.send({ topic, acks: -1, messages: sent }))
    await txn.commit()
    assert.deepEqual(expected[0].map(e => e[0]), [...Array(10).keys()])
    assert.deepEqual(expected[1].map(e => e[0]), [...Array(10).keys()])

    assert.deepEqual(await read(topic, 20, { readUncommitted: false }), expected)
    assert.deepEqual(await read(topic, 20, { readUncommitted: true }), expected)
    // The commit marker takes offset 10 of each partition.
    await eventually('high watermarks 11', async () => {
      const o = await offsets(topic)
      return o[0][1] === 11 && o[1][1] === 11
    })
  })

  test('an aborted transaction is never read by readUncommitted: false, but is by readUncommitted: true', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('abort')
    await createTopic(topic, 2)
    const p = await txnProducer(newName('abort-id'))
    const run = async (prefix, n, end) => {
      const txn = await p.transaction()
      const sent = messages(prefix, n, 2)
      const at = positions(sent, await txn.send({ topic, acks: -1, messages: sent }))
      await (end === 'commit' ? txn.commit() : txn.abort())
      return at
    }
    const first = await run('first', 8, 'commit')
    const aborted = await run('aborted', 6, 'abort')
    const third = await run('third', 4, 'commit')
    // 0-3 | marker 4 | 5-7 aborted | marker 8 | 9-10 | marker 11
    for (const q of [0, 1]) {
      assert.deepEqual(first[q].map(e => e[0]), [0, 1, 2, 3])
      assert.deepEqual(aborted[q].map(e => e[0]), [5, 6, 7])
      assert.deepEqual(third[q].map(e => e[0]), [9, 10])
    }
    assert.deepEqual(await read(topic, 12, { readUncommitted: false }), merge(first, third))
    assert.deepEqual(await read(topic, 18, { readUncommitted: true }), merge(first, aborted, third))
  })

  test('sendOffsets in a transaction commits the group offsets only when the transaction commits', { timeout: TEST_TIMEOUT_MS }, async () => {
    const src = newName('in')
    const dst = newName('out')
    const groupId = newName('pipeline')
    await createTopic(src, 2)
    await createTopic(dst, 2)
    const plain = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
    clients.push(plain)
    await plain.connect()
    await plain.send({ topic: src, acks: -1, messages: messages('in', 10, 2) })

    const p = await txnProducer(newName('pipeline-id'))
    // Round 1: the 10 inputs, transformed, with offsets 5/5, committed.
    let txn = await p.transaction()
    const out1 = messages('in', 10, 2).map(m => ({ ...m, value: `${m.value}!` }))
    const out1At = positions(out1, await txn.send({ topic: dst, acks: -1, messages: out1 }))
    await txn.sendOffsets({
      consumerGroupId: groupId,
      topics: [{ topic: src, partitions: [{ partition: 0, offset: '5' }, { partition: 1, offset: '5' }] }],
    })
    await txn.commit()
    const committed = async () => {
      const [t] = await admin.fetchOffsets({ groupId, topics: [src] })
      return Object.fromEntries(t.partitions.map(x => [x.partition, Number(x.offset)]))
    }
    await eventually('group offsets 5/5 after the commit', async () => {
      const c = await committed()
      return c[0] === 5 && c[1] === 5
    })

    // Round 2: offsets 8/8 sent in a transaction that aborts.
    txn = await p.transaction()
    await txn.send({ topic: dst, acks: -1, messages: messages('aborted', 4, 2) })
    await txn.sendOffsets({
      consumerGroupId: groupId,
      topics: [{ topic: src, partitions: [{ partition: 0, offset: '8' }, { partition: 1, offset: '8' }] }],
    })
    await txn.abort()
    await sleep(1000)
    assert.deepEqual(await committed(), { 0: 5, 1: 5 }, "an aborted transaction's offsets became the group's")
    assert.deepEqual(await read(dst, 10, { readUncommitted: false }), out1At)

    // A member of the group starts where the committed transaction left it.
    const consumer = kafka.consumer({ groupId, sessionTimeout: 6000, heartbeatInterval: 500, maxWaitTimeInMs: 100 })
    clients.push(consumer)
    const seen = []
    try {
      await plain.send({ topic: src, acks: -1, messages: messages('late', 2, 2) })
      await consumer.connect()
      await consumer.subscribe({ topic: src, fromBeginning: true })
      await consumer.run({ eachMessage: async ({ partition, message }) => { seen.push([partition, Number(message.offset)]) } })
      await eventually('the group member reads from the committed offsets', async () => seen.length >= 2, READ_TIMEOUT_MS)
      await sleep(QUIET_MS)
    } finally {
      await consumer.disconnect()
    }
    seen.sort((a, b) => a[0] - b[0] || a[1] - b[1])
    assert.deepEqual(seen, [[0, 5], [1, 5]])
  })

  test('a second producer with the same transactionalId fences the first and aborts its open transaction', { timeout: TEST_TIMEOUT_MS }, async () => {
    const topic = newName('fence')
    await createTopic(topic, 1)
    const id = newName('fence-id')
    const zombie = await txnProducer(id)
    const zombieTxn = await zombie.transaction()
    const zombieSent = messages('zombie', 5, 1)
    const zombieAt = positions(zombieSent, await zombieTxn.send({ topic, acks: -1, messages: zombieSent }))
    assert.deepEqual(zombieAt[0].map(e => e[0]), [0, 1, 2, 3, 4])

    // Its InitProducerId aborts the zombie's transaction (marker at 5) and bumps the epoch.
    const fencer = await txnProducer(id)
    const txn = await fencer.transaction()

    await assert.rejects(zombieTxn.commit(), e => {
      const types = errorTypes(e)
      assert.ok(types.some(t => FENCED.includes(t)), `the zombie's commit failed with ${types} (${e})`)
      return true
    })

    const sent = messages('fencer', 3, 1)
    const at = positions(sent, await txn.send({ topic, acks: -1, messages: sent }))
    await txn.commit()
    assert.ok(at[0][0][0] >= 6, `the new producer wrote before the abort marker: ${JSON.stringify(at)}`)

    assert.deepEqual(await read(topic, 3, { readUncommitted: false }), at)
    assert.deepEqual(await read(topic, 8, { readUncommitted: true }), merge(zombieAt, at))
  })
})
