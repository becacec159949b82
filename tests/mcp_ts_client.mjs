// The official TypeScript MCP client against a tunneld MCP URL: list tools, call some.
// Usage: NODE_PATH=<dir with node_modules/@modelcontextprotocol/sdk> node mcp_ts_client.mjs URL
// Prints one JSON line: {sessionId, annotations: {tool: hints}, call, progress, sampling}.
import { createRequire } from "node:module";
import path from "node:path";

const modules = process.env.NODE_PATH;
if (!modules) throw new Error("set NODE_PATH to the node_modules holding @modelcontextprotocol/sdk");
// ESM ignores NODE_PATH, so resolve the SDK from there explicitly (its CommonJS build).
const require = createRequire(path.join(modules, "noop.js"));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { CreateMessageRequestSchema, CallToolResultSchema } = require("@modelcontextprotocol/sdk/types.js");

const url = new URL(process.argv[2]);
const client = new Client(
  { name: "tunneld-ts-test", version: "1.0.0" },
  { capabilities: { sampling: {} } },
);
client.setRequestHandler(CreateMessageRequestSchema, async () => ({
  role: "assistant",
  content: { type: "text", text: "from-typescript" },
  model: "test-model",
}));
const transport = new StreamableHTTPClientTransport(url);
await client.connect(transport);

const annotations = {};
let cursor;
do {
  const page = await client.listTools(cursor ? { cursor } : {});
  for (const tool of page.tools) annotations[tool.name] = tool.annotations;
  cursor = page.nextCursor;
} while (cursor);

const call = await client.callTool({ name: "test_simple_text", arguments: {} });
const progress = [];
await client.request(
  { method: "tools/call", params: { name: "test_tool_with_progress", arguments: {} } },
  CallToolResultSchema,
  { onprogress: (p) => progress.push(p.progress) },
);
const sampling = await client.callTool({ name: "test_sampling", arguments: { prompt: "hi" } });
const sessionId = transport.sessionId;
await transport.terminateSession();
await client.close();
console.log(JSON.stringify({ sessionId, annotations, call, progress, sampling }));
