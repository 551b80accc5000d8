// Greedy generation in transformers.js (Node) on one of our ONNX export directories, offline.
//
// Used by tests/test_transformersjs.py:  node generate.mjs REQUEST.json  -> one JSON document on
// stdout. The request names the export directory, the transformers.js dtype of the variant, the
// conversation, the prompt ids (and Idefics3 pixel tensors) our Python preprocessing made, and the
// number of tokens to generate. The script answers with what transformers.js' own tokenizer and
// processor make of the conversation (chat template from tokenizer_config.json) and the greedy
// tokens generated from our inputs and from its own.
import { readFileSync } from 'node:fs';
import path from 'node:path';

import {
    AutoModelForCausalLM,
    AutoModelForVision2Seq,
    AutoProcessor,
    AutoTokenizer,
    RawImage,
    env,
} from '@huggingface/transformers';

import { promptTensors, rawTensor } from './tensors.mjs';

env.allowRemoteModels = false; // everything from the export directory, never the Hub

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const modelDir = path.resolve(request.model_dir);
env.localModelPath = path.dirname(modelDir);
const modelId = path.basename(modelDir);

const ids = (tensor) => Array.from(tensor.data, Number);

async function greedy(model, inputs) {
    const promptLength = inputs.input_ids.dims.at(-1);
    const output = await model.generate({
        ...inputs,
        do_sample: false,
        max_new_tokens: request.max_new_tokens,
    });
    return ids(output).slice(promptLength);
}

const options = { dtype: request.dtype, device: 'cpu' };
const result = {};
if (request.image) {
    const processor = await AutoProcessor.from_pretrained(modelId);
    const model = await AutoModelForVision2Seq.from_pretrained(modelId, options);
    const text = processor.apply_chat_template(request.messages, { add_generation_prompt: true });
    const own = await processor(text, [await RawImage.read(request.image)]);
    const ours = {
        ...promptTensors(request.input_ids),
        pixel_values: rawTensor(request.pixel_values, 'float32'),
        pixel_attention_mask: rawTensor(request.pixel_attention_mask, 'bool'),
    };
    result.template_text = text;
    result.template_ids = ids(own.input_ids);
    result.pixel_values_dims = own.pixel_values.dims;
    result.pixel_values = Array.from(own.pixel_values.data);
    result.from_ours = await greedy(model, ours);
    result.from_own = await greedy(model, {
        input_ids: own.input_ids,
        attention_mask: own.attention_mask,
        pixel_values: own.pixel_values,
        pixel_attention_mask: own.pixel_attention_mask,
    });
} else {
    const tokenizer = await AutoTokenizer.from_pretrained(modelId);
    const model = await AutoModelForCausalLM.from_pretrained(modelId, options);
    const text = tokenizer.apply_chat_template(request.messages, {
        add_generation_prompt: true,
        tokenize: false,
    });
    const own = tokenizer(text, { add_special_tokens: false });
    result.template_text = text;
    result.template_ids = ids(own.input_ids);
    result.from_ours = await greedy(model, promptTensors(request.input_ids));
    result.from_own = await greedy(model, { input_ids: own.input_ids, attention_mask: own.attention_mask });
}
process.stdout.write(JSON.stringify(result) + '\n');
