#!/usr/bin/env node
// Peer benchmark: raw Node child_process.fork IPC echo with 2 children.
//
//  (i)  sequential round trip: send one message, wait for its echo, repeat (alternating
//       between the two children, as a pool would); mean and median microseconds per round trip;
//  (ii) burst: N messages sent at once, round-robin over the children, until every echo is
//       back; messages per second.
//
// Output: one line per figure, `name=<name> value=<number> unit=<unit>`, on stdout.
// Usage:  node node_fork_echo.js [--quick] [--rt N] [--burst N] [--serialization json|advanced]
'use strict';

const { fork } = require('child_process');

if (process.argv[2] === '--child') {
  process.on('message', (m) => process.send(m));
  process.on('disconnect', () => process.exit(0));
  return;
}

function argValue(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const quick = process.argv.includes('--quick');
const rtN = Number(argValue('--rt', quick ? 500 : 2000));
const burstN = Number(argValue('--burst', quick ? 10000 : 100000));
const serialization = argValue('--serialization', 'json');
const warm = Math.max(50, Math.floor(rtN / 10));

function emit(name, value, unit) {
  process.stdout.write(`name=${name} value=${value.toFixed(1)} unit=${unit}\n`);
}

function nowNs() {
  return process.hrtime.bigint();
}

async function main() {
  process.stderr.write(`# node ${process.version} serialization=${serialization} rt=${rtN} burst=${burstN}\n`);
  const children = [0, 1].map(() =>
    fork(__filename, ['--child'], { serialization, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] }));

  // One pending resolver per child for the sequential phase; a counter for the burst phase.
  let onEcho = null;
  for (const c of children) c.on('message', (m) => onEcho(m));

  const once = (child, msg) => new Promise((resolve) => { onEcho = resolve; child.send(msg); });

  // Sequential round trips (also warms up both children).
  for (let i = 0; i < warm; i++) await once(children[i & 1], { id: i });
  const samples = new Array(rtN);
  for (let i = 0; i < rtN; i++) {
    const t0 = nowNs();
    await once(children[i & 1], { id: i });
    samples[i] = Number(nowNs() - t0);
  }
  const mean = samples.reduce((a, b) => a + b, 0) / rtN / 1000;
  samples.sort((a, b) => a - b);
  const median = (rtN % 2 ? samples[(rtN - 1) / 2] : (samples[rtN / 2 - 1] + samples[rtN / 2]) / 2) / 1000;
  emit('node_fork_ipc_rt_mean', mean, 'us/rt');
  emit('node_fork_ipc_rt_median', median, 'us/rt');

  // Burst: everything sent at once, then wait for all echoes.
  const rate = await new Promise((resolve) => {
    let got = 0;
    const t0 = nowNs();
    onEcho = () => {
      if (++got === burstN) resolve(burstN / (Number(nowNs() - t0) / 1e9));
    };
    for (let i = 0; i < burstN; i++) children[i & 1].send({ id: i });
  });
  emit('node_fork_ipc_burst', rate, 'msg/s');

  for (const c of children) c.disconnect();
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
