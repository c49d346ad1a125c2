// The STM recipe (etcd3's `client.stm()`, software transactional memory as
// in etcd's concurrency.STM): concurrent transfers between a few accounts,
// each a transaction that reads both balances and its own "done" mark and
// writes all three. Conflicts make the library retry; the money is conserved
// and each transfer is applied exactly once.
//
// Isolation: Serializable (reads at the revision of the transaction's first
// read; the commit requires every key read to be unchanged). Not etcd3
// 1.1.2's default, SerializableSnapshot, which also requires every written
// key's mod revision to be at most the smallest *mod revision* among the
// keys read (etcd's Go STM uses the first read's *store revision* there):
// with two accounts last written at different revisions it conflicts on
// every attempt, even alone, on etcd as on raft-kv.
//
// Each call goes to any of the endpoints (the library picks one at random):
// a read at the first read's revision may reach a member that has not yet
// applied that revision. etcd's member answers "required revision is a
// future revision" there (not retried by the library, so the transfer
// fails: a 3-member etcd fails this script now and then); a raft-kv node
// first catches up with the leader's commit, then answers.

'use strict';

const { connect, prefix, log, check, within, run } = require('./common');

const ACCOUNTS = 4;
const TRANSFERS = 16;
const INITIAL = 1_000;
const CLIENTS = 4;
/** etcd3's `Isolation.Serializable` (a TypeScript const enum: no export). */
const SERIALIZABLE = 1;

const account = i => `${prefix()}recipes/stm/account/${i}`;
const done = i => `${prefix()}recipes/stm/done/${i}`;

/** Transfer `i`: from, to and amount, fixed by `i`. */
function transfer(i) {
  const from = i % ACCOUNTS;
  const to = (from + 1 + (i % (ACCOUNTS - 1))) % ACCOUNTS;
  return { from, to, amount: 1 + ((i * 7) % 13) };
}

/**
 * Runs transfer `i` as one software transaction: it is applied unless its
 * "done" mark is there already. Resolves with what the last attempt did.
 */
function runTransfer(client, i, attempts) {
  const { from, to, amount } = transfer(i);
  // Enough retries for every other transfer to win a conflict first.
  const stm = client.stm({ retries: 4 * TRANSFERS, isolation: SERIALIZABLE });
  return stm.transact(async tx => {
    attempts[i] += 1;
    const [a, b, mark] = await Promise.all([
      tx.get(account(from)).number(),
      tx.get(account(to)).number(),
      tx.get(done(i)).string(),
    ]);
    if (mark !== null) {
      return 'already applied';
    }
    if (a === null || b === null) {
      throw new Error(`transfer ${i} read no balance (account ${from}: ${a}, account ${to}: ${b})`);
    }
    await tx.put(account(from)).value(String(a - amount));
    await tx.put(account(to)).value(String(b + amount));
    await tx.put(done(i)).value(`${from}->${to}:${amount}`);
    return 'applied';
  });
}

async function main() {
  const clients = Array.from({ length: CLIENTS }, connect);
  const client = clients[0];
  await client.delete().prefix(`${prefix()}recipes/stm/`);
  for (let i = 0; i < ACCOUNTS; i++) {
    await client.put(account(i)).value(String(INITIAL));
  }

  // Every transfer at once, over a few connections.
  const attempts = new Array(TRANSFERS).fill(0);
  const outcomes = await within(
    'the concurrent transfers',
    Promise.all(
      Array.from({ length: TRANSFERS }, (_, i) =>
        runTransfer(clients[i % CLIENTS], i, attempts),
      ),
    ),
    90_000,
  );
  const tries = attempts.reduce((x, y) => x + y, 0);
  log(`${TRANSFERS} transfers took ${tries} attempts`);
  check(
    outcomes.every(o => o === 'applied'),
    `each of the ${TRANSFERS} concurrent transfers committed as applied`,
  );
  check(tries > TRANSFERS, `the transfers conflicted and were retried (${tries - TRANSFERS} retries)`);

  // The balances are exactly the initial ones moved by each transfer once.
  const expected = new Array(ACCOUNTS).fill(INITIAL);
  for (let i = 0; i < TRANSFERS; i++) {
    const { from, to, amount } = transfer(i);
    expected[from] -= amount;
    expected[to] += amount;
  }
  const balances = [];
  for (let i = 0; i < ACCOUNTS; i++) {
    balances.push(await client.get(account(i)).number());
  }
  check(
    JSON.stringify(balances) === JSON.stringify(expected),
    `the balances are each transfer applied once: ${JSON.stringify(balances)}`,
  );
  const total = balances.reduce((x, y) => x + y, 0);
  check(total === ACCOUNTS * INITIAL, `the total is conserved: ${total}`);
  for (let i = 0; i < TRANSFERS; i++) {
    const { from, to, amount } = transfer(i);
    const mark = await client.get(done(i)).string();
    if (mark !== `${from}->${to}:${amount}`) {
      check(false, `transfer ${i}'s done mark is ${JSON.stringify(mark)}`);
    }
  }
  log(`ok: every transfer's done mark is there`);

  // A transfer run again sees its mark and changes nothing.
  const again = await within('a transfer run again', runTransfer(client, 0, attempts));
  check(again === 'already applied', 'a transfer run again sees its done mark and does nothing');
  const after = [];
  for (let i = 0; i < ACCOUNTS; i++) {
    after.push(await client.get(account(i)).number());
  }
  check(JSON.stringify(after) === JSON.stringify(balances), 'the balances did not change');
  await client.delete().prefix(`${prefix()}recipes/stm/`);
  clients.forEach(c => c.close());
}

run(main);
