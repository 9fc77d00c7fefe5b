// Runs inside the sandbox: `node --preserve-symlinks-main /dev/fd/N INPUT_FD RESULT_FD MARKER`
// (N: a sealed memfd lent by the daemon, see bootstraps.py). Protocol: MARKER on the result
// fd as soon as node runs; then one JSON message on the input fd (code, event, env,
// limits); the outcome as one JSON document on the result fd. stdout is never parsed.
'use strict';
(function sandboxMain() {
  const fs = require('fs');
  const Module = require('module');
  const path = require('path');
  const ownFd = /^\/dev\/fd\/(\d+)$/.exec(process.argv[1] || '');
  // The program's own descriptor: user code never sees it (the memfd is sealed anyway).
  if (ownFd) fs.closeSync(Number(ownFd[1]));
  const inputFd = Number(process.argv[2]);
  const resultFd = Number(process.argv[3]);
  fs.writeSync(resultFd, process.argv[4]);  // the sandbox is up
  const chunks = [];
  const buf = Buffer.allocUnsafe(1 << 20);
  for (;;) {
    let n;
    try { n = fs.readSync(inputFd, buf, 0, buf.length, null); } catch (e) {
      if (e.code === 'EAGAIN') continue; throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  fs.closeSync(inputFd);
  const msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  // child_process passes only stdio to children unless told otherwise, so the result fd
  // stays with this process.
  Object.assign(process.env, msg.env || {});
  const maxBytes = msg.max_return_bytes || 10485760;
  const filename = path.join(process.cwd(), msg.filename || 'handler.js');
  let reported = false;
  function report(doc) {
    if (reported) return;
    reported = true;
    const data = Buffer.from(JSON.stringify(doc), 'utf8');
    let off = 0;
    while (off < data.length) off += fs.writeSync(resultFd, data, off, data.length - off);
    fs.closeSync(resultFd);
  }
  function isMemoryError(err) {
    return err instanceof RangeError && /allocation failed|out of memory|Invalid array length|Invalid string length/i.test(String(err && err.message));
  }
  function fail(kind, message, code) {
    process.stderr.write(message.endsWith('\n') ? message : message + '\n');
    report({ ok: false, error_type: kind, error: message.slice(-4000) });
    process.exit(code === undefined ? 1 : code);
  }
  function errorText(err) {
    if (err && err.stack) return String(err.stack);
    return 'Uncaught ' + String(err);
  }
  process.on('uncaughtException', (err) => {
    fail(isMemoryError(err) ? 'MemoryError' : ((err && err.name) || 'Error'), errorText(err));
  });
  process.on('unhandledRejection', (err) => {
    fail(isMemoryError(err) ? 'MemoryError' : ((err && err.name) || 'Error'), errorText(err));
  });
  const userModule = new Module(filename, null);
  userModule.filename = filename;
  userModule.paths = Module._nodeModulePaths(process.cwd()).concat(msg.node_paths || []);
  process.argv = [process.argv[0], filename];
  // The user's module is the main one (require.main === module), as with `node handler.js`.
  process.mainModule = userModule;
  // A top-level `function handler` is not exported by CommonJS; this trailer exposes it
  // without changing what the code itself does.
  const trailer = '\n;try { if (typeof handler === "function" && module.exports.handler === undefined) ' +
    'Object.defineProperty(module.exports, "__sandboxDeclaredHandler", { value: handler, enumerable: false }); } catch (e) {}\n';
  try {
    userModule._compile(msg.code + trailer, filename);
  } catch (err) {
    fail(isMemoryError(err) ? 'MemoryError' : ((err && err.name) || 'Error'), errorText(err));
    return;
  }
  const exp = userModule.exports;
  let handler;
  if (exp && typeof exp.handler === 'function') handler = exp.handler;
  else if (typeof exp === 'function') handler = exp;
  else if (exp && typeof exp.__sandboxDeclaredHandler === 'function') handler = exp.__sandboxDeclaredHandler;
  if (!handler) {
    // A plain script: it runs to completion like `node file.js`.
    process.on('exit', (code) => { if (!code) report({ ok: true, return_value: null }); });
    return;
  }
  // The event loop emptied while the handler's promise was still pending: node would
  // exit 0 with no value; that is a failure of the handler, say so. An explicit
  // process.exit(0) from the code is its own choice (like sys.exit(0) in Python).
  let explicitExit = false;
  const realExit = process.exit;
  process.exit = function exit(...args) { explicitExit = true; return realExit.apply(process, args); };
  process.on('exit', (code) => {
    if (reported || code || explicitExit) return;
    const message = "The handler's promise never settled: the event loop emptied before it " +
      'resolved or rejected (nothing left to wait for).';
    process.stderr.write(message + '\n');
    report({ ok: false, error_type: 'UnsettledPromise', error: message });
    process.exitCode = 1;
  });
  const ctx = msg.context || {};
  const deadline = Date.now() + (ctx.timeout || 0) * 1000;
  const context = {
    executionId: ctx.execution_id, awsRequestId: ctx.execution_id, functionName: 'handler',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  Promise.resolve().then(() => handler(msg.event || {}, context)).then((value) => {
    let payload;
    try {
      payload = JSON.stringify({ ok: true, return_value: value === undefined ? null : value }, (k, v) => {
        if (typeof v === 'number' && !Number.isFinite(v)) throw new TypeError('return value contains ' + v + ', which is not JSON');
        return v;
      });
    } catch (err) {
      fail('NonSerializableReturn', "The handler's return value is not JSON-serializable: " + String(err && err.message));
      return;
    }
    const size = Buffer.byteLength(payload, 'utf8');
    if (size > maxBytes) {
      fail('ReturnValueTooLarge', "The handler's return value is " + size + ' bytes serialized; the limit is ' + maxBytes + ' bytes.');
      return;
    }
    reported = true;
    const data = Buffer.from(payload, 'utf8');
    let off = 0;
    while (off < data.length) off += fs.writeSync(resultFd, data, off, data.length - off);
    fs.closeSync(resultFd);
    process.exit(0);
  }, (err) => {
    fail(isMemoryError(err) ? 'MemoryError' : ((err && err.name) || 'Error'), errorText(err));
  });
})();
