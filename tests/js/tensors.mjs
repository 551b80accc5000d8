// Model inputs from what our Python side sends: prompt ids, and raw tensor files (numpy `tofile`).
import { readFileSync } from 'node:fs';

import { Tensor } from '@huggingface/transformers';

// float32, or bool as uint8 bytes
export function rawTensor(spec, type) {
    const bytes = readFileSync(spec.file);
    const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength).slice();
    const data = type === 'bool' ? view : new Float32Array(view.buffer);
    return new Tensor(type, data, spec.dims);
}

export function promptTensors(promptIds) {
    const data = BigInt64Array.from(promptIds, BigInt);
    return {
        input_ids: new Tensor('int64', data, [1, promptIds.length]),
        attention_mask: new Tensor('int64', new BigInt64Array(promptIds.length).fill(1n), [1, promptIds.length]),
    };
}
