// A grpc-js client of the gateway: discovers the API through server reflection, then
// calls it from the .proto sources. Prints one JSON object with what it found.
// Usage: node client.mjs TARGET PROTO_DIR GOOGLEAPIS_DIR
import { createRequire } from "node:module";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const require = createRequire(import.meta.url);
const protobuf = require("protobufjs");
require("protobufjs/ext/descriptor");

const [target, protoDir, googleapisDir] = process.argv.slice(2);
const reflectionProto = path.join(
  path.dirname(require.resolve("@grpc/reflection/package.json")),
  "build/proto/grpc/reflection/v1alpha/reflection.proto",
);
const loadOptions = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function reflect(client, request) {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on("data", (reply) => { resolve(reply); call.end(); });
    call.on("error", reject);
    call.write(request);
  });
}

const reflectionDef = grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, loadOptions));
const reflection = new reflectionDef.grpc.reflection.v1alpha.ServerReflection(
  target, grpc.credentials.createInsecure(),
);
const listed = await reflect(reflection, { list_services: "" });
const services = listed.list_services_response.service.map((s) => s.name);

const symbol = "carbonlink.v1.LinkageGateway";
const files = await reflect(reflection, { file_containing_symbol: symbol });
const FileDescriptorProto = protobuf.descriptor.FileDescriptorProto;
const methods = [];
for (const raw of files.file_descriptor_response.file_descriptor_proto) {
  const file = FileDescriptorProto.decode(raw);
  for (const service of file.service || []) {
    if (`${file.package}.${service.name}` === symbol) {
      for (const method of service.method) methods.push(method.name);
    }
  }
}
reflection.close();

const gatewayDef = grpc.loadPackageDefinition(
  protoLoader.loadSync("carbonlink/v1/gateway.proto", { ...loadOptions, includeDirs: [protoDir, googleapisDir] }),
);
const gateway = new gatewayDef.carbonlink.v1.LinkageGateway(target, grpc.credentials.createInsecure());
const registries = await new Promise((resolve, reject) =>
  gateway.ListRegistries({ page_size: 100 }, (err, reply) => (err ? reject(err) : resolve(reply))),
);
const unimplemented = await new Promise((resolve) =>
  gateway.GetCheckpoint({}, (err) => resolve(err ? grpc.status[err.code] : "OK")),
);
gateway.close();

console.log(JSON.stringify({
  services,
  methods,
  registries: registries.registries.map((r) => r.name),
  get_checkpoint_status: unimplemented,
}));
