// The service-registration recipe: each instance puts a key under a prefix
// with a lease it keeps alive (etcd3's `client.lease(ttl)`); a watcher of the
// prefix sees instances join and leave. An instance whose process dies
// leaves when its lease expires; one that stops gracefully revokes its
// lease and leaves at once.
//
//   node registry.js                 the recipe
//   node registry.js instance NAME   (started by the recipe) registers NAME;
//                                    on SIGTERM revokes its lease and exits

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

/** Seconds: each instance's lease. */
const TTL = 3;
const SERVICES = `${prefix()}recipes/services/`;

/** Registers `name` with a lease kept alive; returns the lease. */
async function register(client, name) {
  const lease = client.lease(TTL);
  lease.on('lost', e => fail(`${name}'s lease was lost: ${e.message}`));
  await lease.put(`${SERVICES}${name}`).value(`address-of-${name}`);
  return lease;
}

async function instance(name) {
  exitWithParent();
  const client = connect();
  const lease = await register(client, name);
  process.on('SIGTERM', async () => {
    try {
      await lease.revoke();
      console.log(`REVOKED ${name}`);
      process.exit(0);
    } catch (e) {
      console.error(`${name} could not revoke its lease: ${e.message}`);
      process.exit(1);
    }
  });
  console.log(`REGISTERED ${await lease.grant()}`);
  setInterval(() => {}, 1_000);
}

async function main() {
  const client = connect();
  await client.delete().prefix(SERVICES);

  // The watcher of the prefix, from before anyone registers.
  const events = [];
  const watcher = await within(
    'the watch to start',
    client.watch().prefix(SERVICES).create(),
  );
  watcher.on('put', kv => events.push(['put', kv.key.toString().slice(SERVICES.length), kv.value.toString()]));
  watcher.on('delete', kv => events.push(['delete', kv.key.toString().slice(SERVICES.length)]));
  watcher.on('error', e => fail(`the watcher failed: ${e.message}`));
  const saw = (type, name) => events.some(e => e[0] === type && e[1] === name);
  const registered = async () =>
    (await client.getAll().prefix(SERVICES).keys()).map(k => k.slice(SERVICES.length)).sort();

  // Two instances in processes of their own, one in this process.
  const alpha = startChild(['instance', 'alpha'], 'REGISTERED');
  const beta = startChild(['instance', 'beta'], 'REGISTERED');
  const [alphaLease, betaLease] = await within(
    'the instances to register',
    Promise.all([alpha.ready, beta.ready]),
  );
  const gammaLease = await register(client, 'gamma');
  for (const name of ['alpha', 'beta', 'gamma']) {
    await waitFor(`the watcher to see ${name} join`, () => saw('put', name));
  }
  check(
    events.filter(e => e[0] === 'put').every(e => e[2] === `address-of-${e[1]}`),
    'the watcher saw alpha, beta and gamma join with their addresses',
  );
  check(
    JSON.stringify(await registered()) === '["alpha","beta","gamma"]',
    'alpha, beta and gamma are registered',
  );
  const alphaKey = await client.get(`${SERVICES}alpha`).exec();
  check(alphaKey.kvs[0].lease === alphaLease, "alpha's key carries alpha's lease");
  const ttl = await client.leaseClient.leaseTimeToLive({ ID: betaLease, keys: true });
  check(
    Number(ttl.grantedTTL) === TTL &&
      Number(ttl.TTL) > 0 &&
      ttl.keys.map(k => k.toString()).join() === `${SERVICES}beta`,
    `beta's lease: granted ${ttl.grantedTTL} s, ${ttl.TTL} s left, keys ${ttl.keys.map(k => k.toString())}`,
  );

  // Kept alive, the leases outlive their TTL.
  await sleep((TTL + 2) * 1000);
  check(
    JSON.stringify(await registered()) === '["alpha","beta","gamma"]',
    `all three are still registered ${TTL + 2} s later (their leases are kept alive)`,
  );
  check(events.every(e => e[0] === 'put'), 'the watcher saw nobody leave meanwhile');

  // alpha's process dies: its key goes when its lease expires.
  alpha.child.kill('SIGKILL');
  const killed = Date.now();
  check((await alpha.exited).signal === 'SIGKILL', 'the alpha process was killed with SIGKILL');
  await waitFor('the watcher to see alpha leave', () => saw('delete', 'alpha'));
  log(`alpha left ${((Date.now() - killed) / 1000).toFixed(1)} s after the kill (lease TTL ${TTL} s)`);
  check(
    JSON.stringify(await registered()) === '["beta","gamma"]',
    'beta and gamma are still registered after alpha left',
  );
  const expired = await client.leaseClient.leaseTimeToLive({ ID: alphaLease });
  check(Number(expired.TTL) === -1, `alpha's lease is gone (time to live answers TTL ${expired.TTL})`);

  // beta stops gracefully: it revokes its lease, its key goes.
  beta.child.kill('SIGTERM');
  const betaExit = await within('beta to exit', beta.exited);
  check(betaExit.code === 0, 'beta revoked its lease and exited');
  await waitFor('the watcher to see beta leave', () => saw('delete', 'beta'));
  check(JSON.stringify(await registered()) === '["gamma"]', 'only gamma is registered after beta left');

  // gamma (in this process) revokes too.
  await gammaLease.revoke();
  await waitFor('the watcher to see gamma leave', () => saw('delete', 'gamma'));
  check((await registered()).length === 0, 'nobody is registered');

  const order = events.map(e => `${e[0]} ${e[1]}`);
  const expected = ['delete alpha', 'delete beta', 'delete gamma'];
  check(
    JSON.stringify(order.slice(3)) === JSON.stringify(expected) &&
      JSON.stringify(order.slice(0, 3).sort()) === '["put alpha","put beta","put gamma"]',
    `the watcher saw each join, then each leave in order: ${order.join(', ')}`,
  );
  await watcher.cancel();
  client.close();
}

if (process.argv[2] === 'instance') {
  instance(process.argv[3]).catch(e => fail(`instance ${process.argv[3]} failed: ${e.stack || e}`));
} else {
  run(main);
}
