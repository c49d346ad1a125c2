// The election recipe (etcd3's `client.election(name)`, etcd's
// concurrency.Election): campaign, observe, proclaim, resign, and failover
// when the leader's process dies.
//
//   node election.js           the recipe
//   node election.js holder V  (started by the recipe) campaigns with value V
//                              and holds leadership until it is killed

'use strict';

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

/** Seconds: the lease of each campaign. */
const TTL = 3;
const ELECTION = `${prefix()}recipes-election`;

async function holder(value) {
  exitWithParent();
  const client = connect();
  const campaign = client.election(ELECTION, TTL).campaign(value);
  campaign.on('error', e => fail(`the holder's campaign failed: ${e.message}`));
  campaign.on('elected', async () => {
    console.log(`ELECTED ${await campaign.getCampaignKey()}`);
  });
  // Holds on (its lease kept alive) until it is killed.
  setInterval(() => {}, 1_000);
}

/** A campaign whose election (or error) is remembered. */
function campaign(election, value) {
  const c = election.campaign(value);
  c.elected = false;
  c.on('elected', () => {
    c.elected = true;
    log(`${value} is elected`);
  });
  c.on('error', e => fail(`the campaign of ${value} failed: ${e.message}`));
  return c;
}

async function main() {
  const client = connect();
  const election = client.election(ELECTION, TTL);

  // An observer from the start: no leader yet.
  const observer = await within('the observer to start', election.observe());
  const seen = [observer.leader()];
  observer.on('change', leader => {
    log(`the observer sees leader ${JSON.stringify(leader)}`);
    seen.push(leader);
  });
  observer.on('error', e => fail(`the observer failed: ${e.message}`));
  check(observer.leader() === undefined, 'the observer starts without a leader');

  // A separate process campaigns and is elected.
  const h = startChild(['holder', 'holder-1'], 'ELECTED');
  const holderKey = await within('the holder process to be elected', h.ready);
  log(`the holder campaigns with key ${holderKey}`);
  await waitFor('the observer to see holder-1', () => seen.includes('holder-1'));
  check((await election.leader()) === 'holder-1', 'election.leader() names holder-1');

  // Two more candidates (in this process) campaign and wait.
  const a = campaign(election, 'candidate-a');
  const keyA = await a.getCampaignKey();
  await waitFor("candidate-a's campaign key", () => client.get(keyA).string());
  const b = campaign(election, 'candidate-b');
  const keyB = await b.getCampaignKey();
  await waitFor("candidate-b's campaign key", () => client.get(keyB).string());
  check(
    keyA !== holderKey && keyB !== holderKey && keyA !== keyB,
    'each candidate campaigns under a key of its own lease',
  );
  // The holder keeps its lease alive: longer than its TTL, nobody else leads.
  await sleep((TTL + 2) * 1000);
  check(!a.elected && !b.elected, `no other candidate is elected while the holder lives (${TTL + 2} s)`);
  check((await election.leader()) === 'holder-1', 'holder-1 still leads');

  // The holder's process dies without resigning: its lease expires, its key
  // goes, and the next candidate (the earliest campaign) leads.
  h.child.kill('SIGKILL');
  const killed = Date.now();
  const { signal } = await h.exited;
  check(signal === 'SIGKILL', 'the holder process was killed with SIGKILL');
  await waitFor('candidate-a to be elected after the holder died', () => a.elected);
  log(`candidate-a was elected ${((Date.now() - killed) / 1000).toFixed(1)} s after the kill (lease TTL ${TTL} s)`);
  check((await client.get(holderKey).string()) === null, "the dead holder's key is gone");
  check(!b.elected, 'candidate-b still waits');
  await waitFor('the observer to see candidate-a', () => seen.includes('candidate-a'));

  // Proclaim: the leader announces a new value without a new election.
  await within('proclaim', a.proclaim('candidate-a-v2'));
  await waitFor('the observer to see the proclaimed value', () =>
    seen.includes('candidate-a-v2'),
  );
  check((await election.leader()) === 'candidate-a-v2', 'election.leader() has the proclaimed value');
  check((await client.get(keyA).string()) === 'candidate-a-v2', "the proclaimed value is in the leader's key");
  check(!b.elected, 'candidate-b still waits after the proclamation');

  // Resign: candidate-a steps down, candidate-b leads.
  await within("candidate-a's resignation", a.resign());
  check((await client.get(keyA).string()) === null, "candidate-a's key is gone after it resigned");
  await waitFor('candidate-b to be elected after candidate-a resigned', () => b.elected);
  await waitFor('the observer to see candidate-b', () => seen.includes('candidate-b'));
  check((await election.leader()) === 'candidate-b', 'election.leader() names candidate-b');

  // The last one resigns: no leader.
  await within("candidate-b's resignation", b.resign());
  await waitFor('the observer to see no leader', () => seen.length > 0 && seen[seen.length - 1] === undefined && seen.length >= 6);
  check((await election.leader()) === undefined, 'election.leader() is undefined when all resigned');

  const expected = [undefined, 'holder-1', 'candidate-a', 'candidate-a-v2', 'candidate-b', undefined];
  check(
    JSON.stringify(seen) === JSON.stringify(expected),
    `the observer saw each leader in order: ${JSON.stringify(seen)}`,
  );
  await observer.cancel();
  const left = await client.getAll().prefix(`election/${ELECTION}/`).keys();
  check(left.length === 0, 'no campaign key is left');
  client.close();
}

if (process.argv[2] === 'holder') {
  holder(process.argv[3]).catch(e => fail(`the holder failed: ${e.stack || e}`));
} else {
  run(main);
}
