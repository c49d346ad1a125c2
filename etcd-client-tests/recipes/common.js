// What every recipe script shares: the client (mutual TLS, from the
// environment), checks that fail loudly, waiting with a deadline, and child
// processes that hold a lease until they are killed.
//
// Environment:
//   ETCD_ENDPOINTS  comma-separated https:// URLs of the cluster's etcd port
//   ETCD_CA         the CA certificate (PEM) that signed the server's
//   ETCD_CERT       this client's certificate (PEM)
//   ETCD_KEY        this client's private key (PEM)
//   RECIPE_PREFIX   optional: prepended to every key the recipes use

'use strict';

const fs = require('fs');
const readline = require('readline');
const { spawn } = require('child_process');
const { Etcd3 } = require('etcd3');

/** Generous: a debug build on a shared two-core machine. */
const DEADLINE_MS = 45_000;

function env(name) {
  const value = process.env[name];
  if (!value) {
    fail(`the environment variable ${name} is not set`);
  }
  return value;
}

/** A client of every endpoint, with the certificates the environment names. */
function connect() {
  return new Etcd3({
    hosts: env('ETCD_ENDPOINTS').split(','),
    credentials: {
      rootCertificate: fs.readFileSync(env('ETCD_CA')),
      privateKey: fs.readFileSync(env('ETCD_KEY')),
      certChain: fs.readFileSync(env('ETCD_CERT')),
    },
  });
}

/** Keys of this run start with this. */
function prefix() {
  return process.env.RECIPE_PREFIX || '';
}

/** The script's name, for its messages. */
const NAME = require('path').basename(process.argv[1], '.js');

function log(message) {
  console.log(`[${NAME}] ${message}`);
}

/** Fails the script: the message goes to stderr and the exit code is 1. */
function fail(message) {
  console.error(`[${NAME}] FAILED: ${message}`);
  for (const child of children) {
    child.kill('SIGKILL');
  }
  process.exit(1);
}

/** A check that passes (and says what it checked) or fails the script. */
function check(condition, what) {
  if (!condition) {
    fail(what);
  }
  log(`ok: ${what}`);
}

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

/**
 * Polls `probe` (may be async) until it returns a truthy value, and returns
 * that value; fails the script if the deadline passes first.
 */
async function waitFor(what, probe, deadlineMs = DEADLINE_MS) {
  const end = Date.now() + deadlineMs;
  let lastError;
  for (;;) {
    try {
      const value = await probe();
      if (value) {
        return value;
      }
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > end) {
      fail(
        `gave up after ${deadlineMs / 1000} s waiting for ${what}` +
          (lastError ? ` (last error: ${lastError.message || lastError})` : ''),
      );
    }
    await sleep(100);
  }
}

/** Resolves with the promise's value, or fails the script at the deadline. */
async function within(what, promise, deadlineMs = DEADLINE_MS) {
  let timer;
  const timeout = new Promise(resolve => {
    timer = setTimeout(resolve, deadlineMs);
  });
  const done = Symbol('timed out');
  const value = await Promise.race([promise, timeout.then(() => done)]);
  clearTimeout(timer);
  if (value === done) {
    fail(`gave up after ${deadlineMs / 1000} s waiting for ${what}`);
  }
  return value;
}

/** Every child started by `startChild`, killed if the script fails. */
const children = new Set();

/**
 * Runs this very script again as a separate node process with `args` (the
 * script decides by its arguments what the child does) and resolves once the
 * child printed a line starting with `ready`, with the rest of that line. The
 * child shares the environment; its other output is passed through. A child
 * whose standard input closes (this process died) exits.
 */
function startChild(args, ready) {
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: process.env,
  });
  children.add(child);
  const exited = new Promise(resolve => {
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  const lines = readline.createInterface({ input: child.stdout });
  const readyLine = new Promise((resolve, reject) => {
    lines.on('line', line => {
      console.log(`  (child ${args.join(' ')}) ${line}`);
      if (line.startsWith(ready)) {
        resolve(line.slice(ready.length).trim());
      }
    });
    exited.then(({ code, signal }) =>
      reject(new Error(`the child ${args.join(' ')} exited (${code ?? signal}) before it was ready`)),
    );
  });
  return { child, exited, ready: readyLine };
}

/** In a child: exit when the parent goes (its end of our stdin closes). */
function exitWithParent() {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

/** Runs `main`, failing the script on an exception or at the overall deadline. */
function run(main, overallMs = 100_000) {
  const timer = setTimeout(
    () => fail(`the whole recipe did not finish within ${overallMs / 1000} s`),
    overallMs,
  );
  main().then(
    () => {
      clearTimeout(timer);
      log('PASSED');
      process.exit(0);
    },
    e => fail(`unexpected error: ${(e && e.stack) || e}`),
  );
}

module.exports = {
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
};
