// node-llama-cpp (llama.cpp for Node apps) on one of our GGUF exports, for
// tests/test_node_llama_cpp.py. Reads one JSON request on stdin and writes one JSON answer:
//   tokenize: its ids for each of `texts` (special tokens parsed, no BOS added)
//   chat:     per chat-wrapper type ("auto": what node-llama-cpp picks for the GGUF's template,
//             "jinjaTemplate": the GGUF's own Jinja template), the wrapper's name and its prompt
//             ids for `messages` followed by the assistant's turn
//   greedy:   up to `max_tokens` greedy tokens after `prompt_ids` (stops at end-of-generation)
import {getLlama, resolveChatWrapper} from "node-llama-cpp";

const request = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (chunk) => (data += chunk));
  process.stdin.on("end", () => resolve(data));
}));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: request.model});

const tokenize = request.texts.map((text) => Array.from(model.tokenize(text, true)));

const history = request.messages.map((m) => m.role === "assistant"
  ? {type: "model", response: [m.content]} : {type: m.role, text: m.content});
history.push({type: "model", response: []});
const chat = {};
for (const type of ["auto", "jinjaTemplate"]) {
  const wrapper = resolveChatWrapper(model, {type, fallbackToOtherWrappersOnJinjaError: false});
  const {contextText} = wrapper.generateContextState({chatHistory: history});
  chat[type] = {wrapper: wrapper.wrapperName, ids: Array.from(contextText.tokenize(model.tokenizer))};
}

const context = await model.createContext({contextSize: 1024, threads: 1});
const greedy = [];
for await (const token of context.getSequence().evaluate(request.prompt_ids, {temperature: 0})) {
  if (model.isEogToken(token)) break;
  greedy.push(token);
  if (greedy.length >= request.max_tokens) break;
}
console.log(JSON.stringify({tokenize, chat, greedy}));
await context.dispose();
await model.dispose();
await llama.dispose();
