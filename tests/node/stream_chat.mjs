// Streams one chat completion from an edgereason server with the official OpenAI Node SDK and prints
// what arrived as one JSON line: the reasoning and content deltas, the finish reason and the usage.
// Usage: node stream_chat.mjs http://127.0.0.1:PORT/v1 "question"
import OpenAI from "openai";

const [baseURL, question] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const stream = await client.chat.completions.create({
  model: "smollm2-135m",
  messages: [{ role: "user", content: question }],
  max_tokens: 256,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
const out = { reasoning: "", content: "", order: [], finish_reason: null, usage: null, chunks: 0 };
for await (const chunk of stream) {
  out.chunks += 1;
  if (chunk.usage) out.usage = chunk.usage;
  for (const choice of chunk.choices ?? []) {
    const delta = choice.delta ?? {};
    if (delta.reasoning_content) { out.reasoning += delta.reasoning_content; out.order.push("reasoning"); }
    if (delta.content) { out.content += delta.content; out.order.push("content"); }
    if (choice.finish_reason) out.finish_reason = choice.finish_reason;
  }
}
console.log(JSON.stringify(out));
