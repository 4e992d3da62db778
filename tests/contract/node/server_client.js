// A Node.js client of aifb.v1.ServerService, built at run time from protos/ with
// @grpc/proto-loader and called with @grpc/grpc-js: proof that a non-Python client speaks the
// contract. It deploys a service, follows it with WatchService until READY, deletes it and keeps
// following until the stream ends at a terminal state. Every step prints one JSON line:
//   {"event": "created" | "watch" | "deleted", "service": {...}}  then  {"event": "end", "code": 0}
// or {"event": "error", "code": N, "details": "..."} (and exit status 1) on a failed call.
//
// Usage: AIFB_TOKEN=<token> node server_client.js HOST:PORT RECIPE REQUEST_ID [KEY=VALUE ...]
// The token comes from the environment, not argv, so other users cannot read it in `ps`.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', '..', 'protos');
const CALL_TIMEOUT_MS = 30000;
const WATCH_TIMEOUT_MS = 60000;

function usage() {
  process.stderr.write('usage: AIFB_TOKEN=... node server_client.js HOST:PORT RECIPE ' +
                       'REQUEST_ID [KEY=VALUE ...]\n');
  process.exit(2);
}

function loadServerService() {
  // Only protos/ is an include dir: google/protobuf/{timestamp,duration}.proto are bundled
  // inside protobufjs (its `common` definitions), so no copy of them is needed on disk.
  const definition = protoLoader.loadSync('aifb/v1/server.proto', {
    includeDirs: [PROTOS],
    keepCase: false, // lowerCamelCase fields, as in the proto3 JSON mapping (and buf curl)
    longs: String, // int64 as a decimal string, as in the proto3 JSON mapping
    enums: String, // enum values by name, e.g. "SERVICE_STATE_READY"
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).aifb.v1.ServerService;
}

function emit(event, fields) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function fail(err) {
  emit('error', { code: err.code, details: err.details || String(err) });
  process.exit(1);
}

function deadline(ms) {
  return { deadline: new Date(Date.now() + ms) };
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, deadline(CALL_TIMEOUT_MS), (err, response) => {
      if (err) reject(err); else resolve(response);
    });
  });
}

const TERMINAL = new Set(['SERVICE_STATE_STOPPED', 'SERVICE_STATE_FAILED']);

async function main() {
  const [address, recipe, requestId, ...pairs] = process.argv.slice(2);
  const token = process.env.AIFB_TOKEN;
  if (!address || !recipe || !requestId || !token) usage();
  const parameters = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) usage();
    parameters[pair.slice(0, eq)] = pair.slice(eq + 1);
  }

  const ServerService = loadServerService();
  const client = new ServerService(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);

  // Twice with the same request_id: the second call must return the same service.
  const request = { recipe, parameters, requestId };
  let name = null;
  for (let i = 0; i < 2; i += 1) {
    const created = await unary(client, 'CreateService', request, metadata);
    emit('created', { service: created.service });
    name = created.service.name;
  }

  let deleting = false;
  let last = null;
  const call = client.WatchService({ name }, metadata, deadline(WATCH_TIMEOUT_MS));
  call.on('data', (message) => {
    last = message.service;
    emit('watch', { service: last });
    if (last.state === 'SERVICE_STATE_READY' && !deleting) {
      deleting = true;
      unary(client, 'DeleteService', { name }, metadata)
        .then((deleted) => emit('deleted', { service: deleted.service }))
        .catch(fail);
    }
  });
  call.on('error', fail);
  call.on('status', (status) => {
    if (status.code !== grpc.status.OK) return; // reported by 'error'
    emit('end', { code: status.code, lastState: last && last.state });
    client.close();
    process.exit(last && TERMINAL.has(last.state) ? 0 : 1);
  });
}

main().catch(fail);
