// Start, stop, kill and restart a rill broker for the kafkajs tests.
//
// A broker owns a temporary directory (data dir and its log) and three free
// loopback ports; a restart keeps both. Every wait is bounded. Where util-linux's setpriv is present
// the broker runs with a parent-death signal, so it dies with this process
// even when the test runner is killed; otherwise an exit handler kills it.

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'

// A fresh data dir starts in well under a second; this is the bound, not the expectation.
const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 20_000
const SETPRIV = '/usr/bin/setpriv'

export function rillBin() {
  const bin = process.env.RILL_BIN
  if (!bin) {
    throw new Error('RILL_BIN is not set: run tests/clients/run.sh, or export RILL_BIN=path/to/rill')
  }
  fs.accessSync(bin, fs.constants.X_OK)
  return bin
}

/** Ports that were free a moment ago, all distinct (held open together while picked). */
export async function freePorts(count) {
  const servers = []
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer()
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', resolve)
      })
      servers.push(server)
    }
    return servers.map(s => s.address().port)
  } finally {
    await Promise.all(servers.map(s => new Promise(resolve => s.close(resolve))))
  }
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

const running = new Set()
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

export class Broker {
  /** `extraArgs` are appended to `rill serve`'s arguments, e.g. ['--group-min-session-timeout-ms', '1000']. */
  constructor({ extraArgs = [] } = {}) {
    this.extraArgs = [...extraArgs]
    this.root = fs.mkdtempSync(path.join(os.tmpdir(), 'rill-kafkajs-test-'))
    this.dataDir = path.join(this.root, 'data')
    this.logPath = path.join(this.root, 'broker.log')
    this.child = null
    this.exited = null
  }

  static async start({ extraArgs = [] } = {}) {
    const broker = new Broker({ extraArgs })
    try {
      ;[broker.kafkaPort, broker.controllerPort, broker.httpPort] = await freePorts(3)
      await broker.#spawnAndWait()
      return broker
    } catch (e) {
      await broker.close()
      throw e
    }
  }

  get bootstrap() {
    return `127.0.0.1:${this.kafkaPort}`
  }

  async #spawnAndWait() {
    fs.mkdirSync(this.dataDir, { recursive: true })
    const log = fs.openSync(this.logPath, 'a')
    const args = [
      'serve',
      '--node-id', '1',
      '--data-dir', this.dataDir,
      '--kafka-addr', `127.0.0.1:${this.kafkaPort}`,
      '--controller-addr', `127.0.0.1:${this.controllerPort}`,
      '--http-addr', `127.0.0.1:${this.httpPort}`,
      ...this.extraArgs,
    ]
    const [cmd, argv] = fs.existsSync(SETPRIV)
      ? [SETPRIV, ['--pdeathsig', 'KILL', '--', rillBin(), ...args]]
      : [rillBin(), args]
    // The broker reads RILL_* variables as settings; none from the caller's
    // environment may leak into a test's broker.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RILL_')))
    const child = spawn(cmd, argv, { env, stdio: ['ignore', log, log] })
    fs.closeSync(log)
    this.child = child
    running.add(child)
    this.exited = new Promise(resolve => {
      child.once('exit', (code, signal) => {
        running.delete(child)
        resolve({ code, signal })
      })
    })

    let exitedEarly = null
    this.exited.then(status => { exitedEarly = status })
    const deadline = Date.now() + START_TIMEOUT_MS
    while (Date.now() < deadline) {
      if (exitedEarly) {
        throw new Error(`broker exited ${JSON.stringify(exitedEarly)} before it was ready:\n${this.logTail()}`)
      }
      try {
        const res = await fetch(`http://127.0.0.1:${this.httpPort}/health`, { signal: AbortSignal.timeout(1000) })
        if (res.status === 200) return
      } catch {
        // Not listening yet.
      }
      await sleep(50)
    }
    this.kill()
    throw new Error(`broker not healthy within ${START_TIMEOUT_MS}ms:\n${this.logTail()}`)
  }

  /** SIGTERM and wait; SIGKILL when it does not exit in time. Resolves to { code, signal }. */
  async stop() {
    if (!this.child) return { code: 0, signal: null }
    const child = this.child
    this.child = null
    child.kill('SIGTERM')
    let timer
    const timeout = new Promise(resolve => {
      timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS)
    })
    const status = await Promise.race([this.exited, timeout])
    clearTimeout(timer)
    if (status === 'timeout') {
      child.kill('SIGKILL')
      await this.exited
      throw new Error(`broker did not exit within ${STOP_TIMEOUT_MS}ms of SIGTERM; killed it`)
    }
    return status
  }

  kill() {
    if (!this.child) return
    this.child.kill('SIGKILL')
    this.child = null
  }

  /** SIGKILL and wait until the process is gone (its ports and data-dir lock released). */
  async killAndWait() {
    if (!this.child) return
    const exited = this.exited
    this.kill()
    let timer
    const timeout = new Promise(resolve => {
      timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS)
    })
    const status = await Promise.race([exited, timeout])
    clearTimeout(timer)
    if (status === 'timeout') throw new Error(`broker did not exit within ${STOP_TIMEOUT_MS}ms of SIGKILL`)
  }

  /** SIGTERM, wait for the exit, start again on the same data dir and ports. Resolves to the stop's { code, signal }. */
  async restart() {
    const status = await this.stop()
    await this.#spawnAndWait()
    return status
  }

  /** SIGKILL, wait for the exit, start again on the same data dir and ports. */
  async restartAfterKill() {
    await this.killAndWait()
    await this.#spawnAndWait()
  }

  /** Stop whatever runs (killing on timeout) and remove the temporary directory. */
  async close() {
    try {
      await this.stop()
    } catch {
      // Already killed by stop().
    } finally {
      fs.rmSync(this.root, { recursive: true, force: true })
    }
  }

  logTail(lines = 60) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n')
    } catch {
      return '(no broker log)'
    }
  }
}
