// What the kafkajs test files share: a sleep, the Kafka error types inside a
// kafkajs error, and node:test's `test` remembering whether any test failed
// (each file prints its broker's log after the suite then).

import { test as nodeTest } from 'node:test'

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

/** Kafka error types carried by a kafkajs error, through aggregates and wrappers. */
export function errorTypes(e, depth = 0) {
  if (!e || depth > 5) return []
  return [
    e.type,
    ...(e.errors || []).flatMap(x => errorTypes(x, depth + 1)),
    ...(e.groups || []).flatMap(x => errorTypes(x.error, depth + 1)),
    ...errorTypes(e.cause, depth + 1),
    ...errorTypes(e.originalError, depth + 1),
  ].filter(Boolean)
}

/** A `test` like node:test's, and `failed()`: whether any test it ran failed. */
export function failureTracking() {
  let anyFailed = false
  const test = (name, options, fn) =>
    nodeTest(name, options, async t => {
      try {
        await fn(t)
      } catch (e) {
        anyFailed = true
        throw e
      }
    })
  return { test, failed: () => anyFailed }
}
