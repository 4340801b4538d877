// kafkajs against a 3-node cluster (`rill cluster local`): an idempotent
// producer (acks=all) rides through the SIGKILL of a partition's leader, and
// a consumer group reads every record once, in order, from the replicas that
// are left.

import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'

import kafkajs from 'kafkajs'

import { rillBin } from './broker.mjs'

const { Kafka, logLevel } = kafkajs
const READY_TIMEOUT_MS = 120_000
const TEST_TIMEOUT_MS = 120_000
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

let root, dir, child, bootstrap, output = ''

before(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'rill-kafkajs-cluster-'))
  dir = path.join(root, 'c')
  child = spawn(rillBin(), ['cluster', 'local', '--nodes', '3', '--dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  })
  child.stdout.on('data', d => { output += d })
  child.stderr.on('data', d => { output += d })
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (!bootstrap) {
    const match = output.match(/^bootstrap: (\S+)$/m)
    if (match) bootstrap = match[1]
    else if (child.exitCode !== null) throw new Error(`rill cluster local exited: ${output}`)
    else if (Date.now() > deadline) throw new Error(`no bootstrap line: ${output}`)
    else await sleep(100)
  }
})

after(async () => {
  if (child && child.exitCode === null) {
    // Ctrl-C stops every node; then the whole group, should anything linger.
    child.kill('SIGINT')
    const deadline = Date.now() + 60_000
    while (child.exitCode === null && Date.now() < deadline) await sleep(100)
    try { process.kill(-child.pid, 'SIGKILL') } catch { /* gone */ }
  }
  fs.rmSync(root, { recursive: true, force: true })
})

test('an idempotent producer and a group ride through a leader kill', { timeout: TEST_TIMEOUT_MS }, async () => {
  const kafka = new Kafka({
    clientId: 'rill-cluster-test',
    brokers: bootstrap.split(','),
    logLevel: logLevel.NOTHING,
    retry: { retries: 30, initialRetryTime: 200, maxRetryTime: 2000 },
  })
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({
    topics: [{
      topic: 'failover',
      numPartitions: 1,
      replicationFactor: 3,
      configEntries: [{ name: 'min.insync.replicas', value: '2' }],
    }],
    waitForLeaders: true,
  })
  const metadata = await admin.fetchTopicMetadata({ topics: ['failover'] })
  const leader = metadata.topics[0].partitions[0].leader
  assert.deepEqual([...metadata.topics[0].partitions[0].isr].sort(), [1, 2, 3])
  await admin.disconnect()

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const send = async prefix => {
    for (let i = 0; i < 50; i += 10) {
      await producer.send({
        topic: 'failover',
        acks: -1,
        messages: Array.from({ length: 10 }, (_, j) => ({ value: `${prefix}-${i + j}` })),
      })
    }
  }
  await send('before')
  const pids = execFileSync('pgrep', ['-f', '--', `--data-dir ${dir}/node-${leader}( |$)`]).toString().trim().split(/\s+/)
  assert.equal(pids.length, 1, `the leader's process: ${pids}`)
  process.kill(Number(pids[0]), 'SIGKILL')
  await send('after')
  await producer.disconnect()

  const consumer = kafka.consumer({ groupId: 'failover-readers', sessionTimeout: 10_000 })
  await consumer.connect()
  await consumer.subscribe({ topic: 'failover', fromBeginning: true })
  const read = []
  await consumer.run({ eachMessage: async ({ message }) => { read.push(message.value.toString()) } })
  const deadline = Date.now() + 60_000
  while (read.length < 100 && Date.now() < deadline) await sleep(100)
  await consumer.disconnect()
  const expected = [
    ...Array.from({ length: 50 }, (_, i) => `before-${i}`),
    ...Array.from({ length: 50 }, (_, i) => `after-${i}`),
  ]
  assert.deepEqual(read, expected)
})
