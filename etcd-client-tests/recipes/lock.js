// The lock recipe (etcd3's `client.lock(key)`: a key created with the
// holder's lease only if it does not exist): mutual exclusion among several
// contenders, and a lock whose holder's process dies passing on once the
// holder's lease expires.
//
//   node lock.js          the recipe
//   node lock.js holder   (started by the recipe) takes the lock and holds
//                         it until it is killed

'use strict';

const { EtcdLockFailedError } = require('etcd3');
const {
  connect,
  prefix,
  log,
  fail,
  check,
  sleep,
  waitFor,
  within,
  startChild,
  exitWithParent,
  run,
} = require('./common');

/** Seconds: the lease under each lock. */
const TTL = 3;
const SHARED = `${prefix()}recipes/lock/shared`;
const COUNTER = `${prefix()}recipes/lock/counter`;
const HOLDER = `${prefix()}recipes/lock/holder`;
const CRASH = `${prefix()}recipes/lock/crash`;
const CONTENDERS = 4;
const ROUNDS = 5;

async function holder() {
  exitWithParent();
  const client = connect();
  const lock = client.lock(CRASH).ttl(TTL);
  await lock.acquire();
  console.log(`LOCKED ${await lock.leaseId()}`);
  // Holds the lock (its lease kept alive) until it is killed.
  setInterval(() => {}, 1_000);
}

/**
 * Takes `key`'s lock (retrying while another holds it), runs `fn` under it,
 * and releases it; counts the attempts refused because the lock was held.
 */
async function underLock(client, key, fn, refusals) {
  const end = Date.now() + 60_000;
  for (;;) {
    try {
      return await client.lock(key).ttl(TTL).do(fn);
    } catch (e) {
      if (!(e instanceof EtcdLockFailedError)) {
        throw e;
      }
      refusals.count += 1;
      if (Date.now() > end) {
        fail(`could not take the lock ${key} within 60 s`);
      }
      await sleep(20 + Math.random() * 60);
    }
  }
}

async function mutualExclusion() {
  const setup = connect();
  await setup.put(COUNTER).value('0');
  await setup.delete().key(HOLDER);
  const inside = new Set();
  const refusals = { count: 0 };
  let entries = 0;
  const contender = async name => {
    const client = connect();
    for (let round = 0; round < ROUNDS; round++) {
      await underLock(
        client,
        SHARED,
        async () => {
          // In this process: nobody else is inside.
          if (inside.size !== 0) {
            fail(`${name} holds the lock while ${[...inside].join(', ')} holds it too`);
          }
          inside.add(name);
          entries += 1;
          // In etcd: no other holder left its mark, and the counter's
          // read-modify-write (no compare-and-swap) loses no update.
          const other = await client.get(HOLDER).string();
          if (other !== null) {
            fail(`${name} holds the lock while ${other}'s mark is there`);
          }
          await client.put(HOLDER).value(name);
          const counter = Number(await client.get(COUNTER).string());
          await sleep(30);
          await client.put(COUNTER).value(String(counter + 1));
          await client.delete().key(HOLDER);
          inside.delete(name);
        },
        refusals,
      );
    }
    client.close();
  };
  const names = Array.from({ length: CONTENDERS }, (_, i) => `contender-${i}`);
  await within(
    'the contenders to finish',
    Promise.all(names.map(contender)),
    90_000,
  );
  const total = CONTENDERS * ROUNDS;
  check(entries === total, `${CONTENDERS} contenders entered the lock ${total} times, one at a time`);
  check(refusals.count > 0, `the contenders contended: ${refusals.count} attempts were refused while the lock was held`);
  const counter = Number(await setup.get(COUNTER).string());
  check(counter === total, `the counter incremented under the lock lost no update: ${counter} == ${total}`);
  check((await setup.get(SHARED).string()) === null, 'the lock key is gone after the last release');
  setup.close();
}

async function holderDies() {
  const client = connect();
  const h = startChild(['holder'], 'LOCKED');
  const holderLease = await within('the holder process to take the lock', h.ready);
  log(`the holder took ${CRASH} with lease ${holderLease}`);
  const held = await client.get(CRASH).exec();
  check(
    held.kvs.length === 1 && held.kvs[0].lease === holderLease,
    "the lock key is there with the holder's lease",
  );
  const tryLock = async () => {
    const lock = client.lock(CRASH).ttl(TTL);
    try {
      await lock.acquire();
      return lock;
    } catch (e) {
      if (e instanceof EtcdLockFailedError) {
        return null;
      }
      throw e;
    }
  };
  check((await tryLock()) === null, 'the lock is refused while the holder holds it');
  // The holder keeps its lease alive: past its TTL, it still holds.
  await sleep((TTL + 2) * 1000);
  check((await tryLock()) === null, `the lock is still refused ${TTL + 2} s later (the holder renews its lease)`);

  // The holder dies without releasing: its lease expires and the lock
  // passes on.
  h.child.kill('SIGKILL');
  const killed = Date.now();
  const { signal } = await h.exited;
  check(signal === 'SIGKILL', 'the holder process was killed with SIGKILL');
  const lock = await waitFor('the lock to pass on after the holder died', tryLock);
  log(`the lock passed on ${((Date.now() - killed) / 1000).toFixed(1)} s after the kill (lease TTL ${TTL} s)`);
  const mine = await lock.leaseId();
  const now = await client.get(CRASH).exec();
  check(
    now.kvs.length === 1 && now.kvs[0].lease === mine && mine !== holderLease,
    "the lock key now carries the new holder's lease",
  );
  await lock.release();
  check((await client.get(CRASH).string()) === null, 'the lock key is gone after the release');
  client.close();
}

async function main() {
  await mutualExclusion();
  await holderDies();
}

if (process.argv[2] === 'holder') {
  holder().catch(e => fail(`the holder failed: ${e.stack || e}`));
} else {
  run(main);
}
