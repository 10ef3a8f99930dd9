"""A KV-cached ONNX decoder as the benchmark's plain-onnxruntime programs see it: its input names
and integer types, its cache inputs and outputs in matching order (`past_%d` / `present_%d`, keys
and values stacked, or `past_key_values.%d.key` / `present.%d.key`), the shape of an empty cache,
and the first step's inputs (left-padded prompts, the mask, positions max(cumsum(mask) - 1, 0))."""
import numpy as np
import onnxruntime as ort

TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


def session(path, threads=None):
    """A CPU session with ONNX Runtime's defaults (what onnxruntime-genai uses when its
    genai_config.json sets nothing), or `threads` intra-op threads."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class Decoder:
    def __init__(self, sess):
        self.sess = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        self.types = {n: TYPES[i.type] for n, i in inputs.items() if i.type in TYPES}
        if "past_0" in inputs:
            layers = sum(1 for n in inputs if n.startswith("past_"))
            self.pasts = [f"past_{i}" for i in range(layers)]
            self.presents = [f"present_{i}" for i in range(layers)]
        else:
            layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
            self.pasts = [f"past_key_values.{i}.{p}" for i in range(layers) for p in ("key", "value")]
            self.presents = [f"present.{i}.{p}" for i in range(layers) for p in ("key", "value")]
        self.past_shape = list(inputs[self.pasts[0]].shape)  # symbolic batch and past length
        self.outputs = ["logits"] + self.presents

    def empty_cache(self, batch):
        """Shape of an empty cache tensor for `batch` rows: the batch axis set, past length 0."""
        shape = [d if isinstance(d, int) else None for d in self.past_shape]
        batch_axis = 1 if len(shape) == 5 else 0
        shape[batch_axis] = batch
        shape[-2] = 0
        return tuple(shape)

    def first_inputs(self, prompts, pad):
        """input_ids, attention_mask, position_ids for left-padded `prompts` (int64 arrays)."""
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return ids, mask, positions

    def feeds(self, ids, mask, positions, cache):
        """The step's input dict: the integer inputs in the model's types, then the cache."""
        f = {"input_ids": ids.astype(self.types["input_ids"], copy=False)}
        if "attention_mask" in self.types:
            f["attention_mask"] = mask.astype(self.types["attention_mask"], copy=False)
        if "position_ids" in self.types:
            f["position_ids"] = positions.astype(self.types["position_ids"], copy=False)
        f.update(zip(self.pasts, cache))
        return f
