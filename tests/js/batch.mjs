// Greedy generation in transformers.js (Node) for many prompts on one loaded export, for
// benchmarks/transformersjs_student.py:  node batch.mjs REQUEST.json  -> one JSON document.
// The request names the export directory and its transformers.js dtype, the number of new tokens,
// and items: our prompt ids (and, for a vision model, our pixel tensors as raw files). The answer
// holds, per item, the generated ids and the milliseconds `generate` took.
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { AutoModelForCausalLM, AutoModelForVision2Seq, env } from '@huggingface/transformers';

import { promptTensors, rawTensor } from './tensors.mjs';

env.allowRemoteModels = false; // everything from the export directory, never the Hub

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const modelDir = path.resolve(request.model_dir);
env.localModelPath = path.dirname(modelDir);
const modelId = path.basename(modelDir);

const options = { dtype: request.dtype, device: 'cpu' };
const vision = request.items.some((item) => item.pixel_values);
const load = performance.now();
const model = vision
    ? await AutoModelForVision2Seq.from_pretrained(modelId, options)
    : await AutoModelForCausalLM.from_pretrained(modelId, options);
const loadMs = performance.now() - load;
const results = [];
for (const item of request.items) {
    const n = item.input_ids.length;
    const inputs = promptTensors(item.input_ids);
    if (item.pixel_values) {
        inputs.pixel_values = rawTensor(item.pixel_values, 'float32');
        inputs.pixel_attention_mask = rawTensor(item.pixel_attention_mask, 'bool');
    }
    const start = performance.now();
    const output = await model.generate({ ...inputs, do_sample: false, max_new_tokens: request.max_new_tokens });
    const ms = performance.now() - start;
    results.push({ ids: Array.from(output.data, Number).slice(n), ms });
}
process.stdout.write(JSON.stringify({ load_ms: loadMs, results }) + '\n');
