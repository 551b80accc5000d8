"""Our llama.cpp + libmtmd driver: one GGUF (and its mmproj) as one sequence we steer ourselves.

llama-cpp-python's chat handlers clear the KV cache on every call; a cascade wants the opposite:
stage 2 continues from the state stage 1 left. `LlamaSession` drives llama.cpp's C API directly:

- `tokenize_prompt(text, images)`: the rendered prompt with one `marker` per image, cut by libmtmd
  into text and image chunks. `Prompt.ids` is one id per KV slot: text tokens, and for an image
  `n_tokens` copies of the model's image token (the id the HF processor repeats, so the ids equal
  the torch backend's). `Prompt.images` records each image span (its index, tokens, positions,
  libmtmd chunk and, once encoded, its embedding), so common-prefix reuse works on plain id lists.
  The layout is libmtmd's own, the one every llama.cpp client (llama-server, Ollama,
  llama-cpp-python's server) uses: Idefics3 images are always grid tiles then the global image,
  so an image within one tile is a 1x1 grid (`<fake_token_around_image><row_1_col_1>` + tile +
  `\n\n<fake_token_around_image><global-img>` + global + `<fake_token_around_image>`).
- `eval(ids, start, images)`: evaluate ids[start:] on top of a cache holding ids[:start]; image
  spans are decoded from their kept embedding (the vision encoder runs once per image, also when
  a conversation is re-prefilled). Returns the last position's logits; `step` decodes one token.
- positions: an image takes `n_pos` KV positions for `n_tokens` embeddings (M-RoPE models such as
  Qwen2-VL use fewer positions than tokens), so index i of `ids` sits at position
  i - sum(n_tokens - n_pos) over the images before it. `truncate(i)` removes positions from there.
- `snapshot()` / `restore()`: the sequence's KV state (llama_state_seq_*) plus our bookkeeping, for
  branching a conversation and coming back.

    session = LlamaSession("model-f32.gguf", "mmproj-f32.gguf", n_ctx=2048)
    prompt = session.tokenize_prompt(text.replace("<image>", session.marker), [image])
    logits = session.eval(prompt.ids, 0, prompt.images)
    logits = session.step(int(logits.argmax()))

llama_cpp is imported when a session is opened, so the core imports without it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import logging
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from casseat_edge.config import check_threads
from casseat_edge.errors import (
    BackendUnavailableError,
    CasseatError,
    ConfigError,
    DataError,
    ModelSpecError,
)
from casseat_edge.formats.gguf_header import read_gguf_header, scan_gguf_fields

log = logging.getLogger(__name__)
EXTRA = "llama"
SEQ = 0  # the one sequence a session drives
TOKENIZE_ERRORS = {
    1: "the number of image markers in the prompt differs from the number of images",
    2: "libmtmd could not preprocess the image",
}


def projectors() -> dict[str, tuple[str, str]]:
    """clip.projector_type -> (HF architecture, the image token its HF processor repeats per
    embedding), from the architecture entries (`ArchSpec.mmproj_projector`, `image_token`)."""
    from casseat_edge.models.archs import ARCHS

    return {
        arch.mmproj_projector: (arch.architecture, arch.image_token)
        for _, arch in ARCHS.items()
        if arch.mmproj_projector
    }


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailableError(
            "llama.cpp needs llama-cpp-python; install the extra: pip install "
            f"'casseat-edge[{EXTRA}]' (scripts/setup.sh builds it portably)"
        ) from None
    return llama_cpp


@dataclasses.dataclass(eq=False)
class ImageSpan:
    """One image in a prompt: where its embeddings sit in `Prompt.ids` and how to decode them."""

    start: int  # index of its first embedding in the prompt's ids
    n_tokens: int  # embeddings (KV cells)
    n_pos: int  # positions it advances (M-RoPE: max(grid h, grid w), else n_tokens)
    key: str  # hash of the pixels: equal keys share one embedding
    chunk: Any  # owned libmtmd image chunk (freed with the span)
    embedding: np.ndarray | None = None  # [n_tokens, n_embd] float32, set by the first encode

    @property
    def end(self) -> int:
        return self.start + self.n_tokens


@dataclasses.dataclass
class Prompt:
    """A tokenized prompt: one id per KV slot (image slots hold the image token) + its images."""

    ids: list[int]
    images: list[ImageSpan]

    @property
    def image_end(self) -> int:
        """Index after the last image embedding: a prefill never starts inside an image."""
        return self.images[-1].end if self.images else 0


@dataclasses.dataclass(frozen=True)
class SessionState:
    """A snapshot of the sequence: llama.cpp's KV bytes plus what the cache holds."""

    data: bytes
    ids: tuple[int, ...]
    images: tuple[ImageSpan, ...]


class LlamaSession:
    """A text GGUF (+ optional mmproj) in llama.cpp, driven as one sequence with KV reuse."""

    def __init__(
        self,
        gguf: str | Path,
        mmproj: str | Path | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        threads: int | None = None,
        seed: int = 0,
        mmproj_settings: dict[str, int] | None = None,
    ) -> None:
        """`mmproj_settings`: libmtmd context fields set over our defaults (e.g.
        `image_min_tokens` / `image_max_tokens`, which otherwise follow the exporter's pixel
        bounds), for checks that need an image kept at its own size."""
        threads = check_threads(threads)
        if n_ctx < 1 or n_batch < 1:
            raise ConfigError(f"n_ctx and n_batch: must be >= 1 (found {n_ctx} and {n_batch})")
        self._cpp = import_llama_cpp()
        self.path = Path(gguf)
        self.mmproj = Path(mmproj) if mmproj else None
        self._closed = True  # until the model is loaded: close() then has nothing to free
        # llama.cpp warns on a context past the trained one and attends poorly there: cap it
        self.n_ctx_train = gguf_context_length(self.path)
        if self.n_ctx_train and n_ctx > self.n_ctx_train:
            log.info("n_ctx %d capped at %s's trained context %d", n_ctx, self.path.name,
                     self.n_ctx_train)  # fmt: skip
            n_ctx = self.n_ctx_train
        meta = _mmproj_fields(self.mmproj) if self.mmproj else {}  # checked before loading
        try:
            self.llm = self._cpp.Llama(
                str(self.path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,  # an image's embeddings go in one ubatch (non-causal projectors)
                n_threads=threads,
                seed=seed,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python: "Failed to load model from file"
            raise ModelSpecError(
                f"{self.path}: llama.cpp could not load this GGUF (truncated, corrupt or of an "
                f"unsupported architecture: {exc.__class__.__name__}); re-export it with "
                "casseat-edge export"
            ) from None
        self._closed = False
        self.n_ctx, self.n_batch = self.llm.n_ctx(), n_batch
        self.n_vocab = self.llm.n_vocab()
        self.vocab = self.llm._model.vocab
        self._ctx = self.llm._ctx.ctx
        self._memory = self._cpp.llama_get_memory(self._ctx)
        self._batch = self._cpp.llama_batch_init(n_batch, 0, 1)
        self._finalizer = weakref.finalize(self, self._cpp.llama_batch_free, self._batch)
        self.projector: str | None = None  # clip.projector_type of the mmproj
        self.architecture: str | None = None  # the HF architecture that projector belongs to
        self.image_token: int | None = None
        self._mtmd: Any = None
        if self.mmproj is not None:
            try:
                self._open_mmproj(meta, threads, mmproj_settings or {})
            except Exception:
                self.close()  # free the text model now, not at interpreter teardown
                raise
        self.ids: list[int] = []  # what the KV cache holds, by index
        self.images: list[ImageSpan] = []  # the image spans among them
        self.encoder_runs = 0  # vision-encoder runs, one per image chunk (tile); never repeated
        self._encode_s = 0.0

    # ---- loading
    def _open_mmproj(self, meta: dict[str, Any], threads: int, settings: dict[str, int]) -> None:
        from llama_cpp import mtmd_cpp

        self._mtmd_cpp = mtmd_cpp
        projector = meta["clip.projector_type"]
        _quiet_mtmd_logs(mtmd_cpp)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = threads
        params.image_min_tokens, params.image_max_tokens = _token_limits(meta)
        for key, value in settings.items():
            if key.startswith("_") or not hasattr(params, key):
                raise ConfigError(f"mmproj_settings: libmtmd has no context field {key!r}")
            setattr(params, key, value)
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # load-time notes; failures are raised below
            ctx = mtmd_cpp.mtmd_init_from_file(str(self.mmproj).encode(), self.llm.model, params)
        if not ctx:
            raise ModelSpecError(
                f"{self.mmproj}: libmtmd could not load this mmproj with {self.path.name} (corrupt, "
                "or made for another text model); re-export both with casseat-edge export"
            )
        self._mtmd = ctx
        self._mtmd_finalizer = weakref.finalize(self, mtmd_cpp.mtmd_free, ctx)
        if not mtmd_cpp.mtmd_support_vision(ctx):
            raise ModelSpecError(f"{self.mmproj}: this mmproj has no vision encoder")
        self.projector = projector
        self.architecture, token_text = projectors()[projector]
        found = self.tokenize(token_text)
        if len(found) != 1:
            raise ModelSpecError(
                f"{self.path}: the vocabulary has no single {token_text!r} token, which the "
                f"{projector} projector needs; re-export the model with its processor's tokenizer"
            )
        self.image_token = found[0]

    @property
    def vision(self) -> bool:
        return self._mtmd is not None

    @property
    def marker(self) -> str:
        """The text that stands for one image in `tokenize_prompt`."""
        from llama_cpp import mtmd_cpp

        return mtmd_cpp.mtmd_default_marker().decode()

    def close(self) -> None:
        """Free libmtmd, the batch and the model (idempotent); the session is unusable after."""
        if self._closed:
            return
        self._closed = True
        if self._mtmd is not None:
            self._mtmd_finalizer()
            self._mtmd = None
        self._finalizer()
        self.llm.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        """Native calls on freed llama.cpp memory crash the process: refuse them instead."""
        if self._closed:
            raise CasseatError(
                f"{self.path.name}: this llama.cpp session is closed (its model was freed); "
                "open a new one (a new Cascade or LlamaSession) to run the model again"
            )

    # ---- text
    def tokenize(self, text: str) -> list[int]:
        """Ids of template text (special-token markup parsed, no BOS added)."""
        self._check_open()
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: list[int]) -> str:
        self._check_open()
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def piece(self, token: int) -> str:
        return self.detokenize([token])

    def is_eog(self, token: int) -> bool:
        self._check_open()
        return bool(self._cpp.llama_vocab_is_eog(self.vocab, token))

    # ---- prompts with images
    def tokenize_prompt(self, text: str, images: list[Any]) -> Prompt:
        """Cut `text` (one `marker` per image, RGB PIL images) into ids and image spans."""
        self._check_open()
        if not images:
            return Prompt(self.tokenize(text), [])
        if not self.vision:
            raise ModelSpecError(f"{self.path}: no mmproj is loaded, so images cannot be read")
        if text.count(self.marker) != len(images):
            raise DataError(
                f"the prompt has {text.count(self.marker)} image marker(s) {self.marker!r} for "
                f"{len(images)} image(s); the chat template must render one per image"
            )
        cpp = self._mtmd_cpp
        bitmaps = [self._bitmap(image, i) for i, image in enumerate(images)]
        chunks = cpp.mtmd_input_chunks_init()
        try:
            inp = cpp.mtmd_input_text()
            raw = text.encode("utf-8")
            inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), False, True
            array = (cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*(b for b, _ in bitmaps))
            status = cpp.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(inp), array, len(bitmaps))
            if status != 0:
                reason = TOKENIZE_ERRORS.get(status, f"status {status}")
                raise DataError(
                    f"{self.mmproj}: libmtmd could not tokenize the prompt with "
                    f"{len(images)} image(s): {reason}"
                )
            prompt = self._read_chunks(chunks)
        finally:
            cpp.mtmd_input_chunks_free(chunks)
            for bitmap, _ in bitmaps:
                cpp.mtmd_bitmap_free(bitmap)
        if len(prompt.ids) > self.n_ctx:
            raise DataError(
                f"the prompt takes {len(prompt.ids)} tokens with its image(s), more than the "
                f"context of {self.n_ctx}; raise n_ctx or use a smaller image"
            )
        return prompt

    def _bitmap(self, image: Any, index: int) -> tuple[Any, str]:
        """A libmtmd bitmap of an RGB image, its id: prompt index + pixel hash (for reuse)."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        height, width = pixels.shape[:2]
        digest = hashlib.sha256(pixels.tobytes() + f"{width}x{height}".encode()).hexdigest()
        key = f"{index}:{digest[:16]}"
        data = pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        bitmap = self._mtmd_cpp.mtmd_bitmap_init(width, height, data)  # copies the pixels
        if not bitmap:
            raise DataError(f"libmtmd could not take a {width}x{height} image")
        self._mtmd_cpp.mtmd_bitmap_set_id(bitmap, key.encode())  # chunks carry it: which image
        return bitmap, key

    def _read_chunks(self, chunks: Any) -> Prompt:
        """Text tokens and owned image chunks, in prompt order; image slots get the image id."""
        cpp = self._mtmd_cpp
        segments: list[list[int] | ImageSpan] = []
        per_image: dict[str, int] = {}  # image id -> index of its last chunk (tile or overview)
        for i in range(cpp.mtmd_input_chunks_size(chunks)):
            chunk = cpp.mtmd_input_chunks_get(chunks, i)
            kind = cpp.mtmd_input_chunk_get_type(chunk)
            if kind == cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                segments.append(tokens[: count.value])
                continue
            if kind != cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise DataError(f"{self.mmproj}: libmtmd returned a non-image media chunk")
            image = (cpp.mtmd_input_chunk_get_id(chunk) or b"").decode()
            per_image[image] = per_image.get(image, -1) + 1
            owned = cpp.mtmd_input_chunk_copy(chunk)
            span = ImageSpan(
                start=0,
                n_tokens=cpp.mtmd_input_chunk_get_n_tokens(chunk),
                n_pos=cpp.mtmd_input_chunk_get_n_pos(chunk),
                key=f"{image}/{per_image[image]}",
                chunk=owned,
            )
            weakref.finalize(span, cpp.mtmd_input_chunk_free, owned)
            segments.append(span)
        ids: list[int] = []
        images: list[ImageSpan] = []
        for segment in segments:
            if isinstance(segment, ImageSpan):
                segment.start = len(ids)
                images.append(segment)
                ids += [self.image_token] * segment.n_tokens
            else:
                ids += segment
        return Prompt(ids, images)

    # ---- the KV cache
    def position(self, index: int, images: list[ImageSpan] | None = None) -> int:
        """KV position of `ids[index]`: images before it may take fewer positions than slots."""
        spans = self.images if images is None else images
        return index - sum(s.n_tokens - s.n_pos for s in spans if s.end <= index)

    def truncate(self, n_tokens: int) -> None:
        """Keep the first `n_tokens` slots of the cache (0 clears it); never cuts an image."""
        self._check_open()
        n_tokens = min(n_tokens, len(self.ids))
        if any(s.start < n_tokens < s.end for s in self.images):
            raise ValueError(f"cannot truncate the KV cache to {n_tokens}: inside an image")
        self._cpp.llama_memory_seq_rm(self._memory, SEQ, self.position(n_tokens), -1)
        self.ids = self.ids[:n_tokens]
        self.images = [s for s in self.images if s.end <= n_tokens]

    def common_prefix(self, prompt: Prompt) -> int:
        """How many leading slots of `prompt` the cache already holds (same ids, same images)."""
        count = 0
        for cached, new in zip(self.ids, prompt.ids):
            if cached != new:
                break
            count += 1
        cached_images = {s.start: s.key for s in self.images}
        for span in prompt.images:
            if span.start < count and cached_images.get(span.start) != span.key:
                return span.start  # same placeholder ids, different pixels
        return count

    def eval(
        self,
        ids: list[int],
        start: int,
        images: list[ImageSpan] | None = None,
        all_logits: bool = False,
    ) -> np.ndarray:
        """Evaluate ids[start:] on a cache holding ids[:start]; the last position's logits, or with
        `all_logits` those of every position of the text after the last image, [n, vocab].

        `images` are the prompt's image spans (None: the cache's own, for text after them)."""
        self._check_open()
        if start != len(self.ids):
            raise ValueError(f"the cache holds {len(self.ids)} tokens, not {start}")
        if start >= len(ids):
            raise ValueError("nothing to evaluate: the last prompt token must be evaluated")
        spans = self.images if images is None else images
        kept = [s for s in spans if s.end <= start]
        new = [s for s in spans if s.end > start]
        if any(s.start < start for s in new):
            raise ValueError(f"a prefill cannot start at {start}, inside an image")
        if new and new[-1].end >= len(ids):
            raise DataError("the prompt ends with an image; the template must add text after it")
        self.images = kept
        cursor = start
        for span in new:
            self._decode_text(ids[cursor : span.start], logits_last=False)
            self._decode_image(span)
            cursor = span.end
        rows = self._decode_text(ids[cursor:], logits_last=True, logits_all=all_logits)
        return np.stack(rows) if all_logits else self.logits()

    def step(self, token: int) -> np.ndarray:
        """Evaluate one token after the cache; its logits."""
        self._check_open()
        self._decode_text([token], logits_last=True)
        return self.logits()

    def logits(self) -> np.ndarray:
        self._check_open()
        pointer = self._cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _decode_text(
        self, ids: list[int], logits_last: bool, logits_all: bool = False
    ) -> list[np.ndarray]:
        """Decode text tokens after the cache; with `logits_all`, every position's logits."""
        batch = self._batch
        rows: list[np.ndarray] = []
        for offset in range(0, len(ids), self.n_batch):
            part = ids[offset : offset + self.n_batch]
            first = self.position(len(self.ids))
            for j, token in enumerate(part):
                batch.token[j] = token
                batch.pos[j] = first + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = SEQ
                batch.logits[j] = logits_all
            batch.n_tokens = len(part)
            if logits_last and offset + len(part) == len(ids):
                batch.logits[len(part) - 1] = True
            status = self._cpp.llama_decode(self._ctx, batch)
            if status != 0:
                raise DataError(
                    f"llama.cpp could not decode {len(part)} tokens at position {first} "
                    f"(status {status}); the context of {self.n_ctx} may be full"
                )
            self.ids += part
            for j in range(len(part) if logits_all else 0):
                pointer = self._cpp.llama_get_logits_ith(self._ctx, j)
                rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
        return rows

    def _decode_image(self, span: ImageSpan) -> None:
        cpp = self._mtmd_cpp
        embedding = self._embedding(span)
        first = self.position(len(self.ids))
        new_pos = self._cpp.llama_pos(0)
        status = cpp.mtmd_helper_decode_image_chunk(
            self._mtmd, self._ctx, span.chunk,
            embedding.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            first, SEQ, self.n_batch, ctypes.byref(new_pos), _NO_CALLBACK(), None,
        )  # fmt: skip
        if status != 0:
            raise DataError(
                f"llama.cpp could not decode an image of {span.n_tokens} tokens at position "
                f"{first} (status {status}); raise n_ctx or n_batch, or use a smaller image"
            )
        assert new_pos.value == first + span.n_pos, (new_pos.value, first, span.n_pos)
        self.ids += [self.image_token] * span.n_tokens
        self.images.append(span)

    def image_embeddings(self, prompt: Prompt) -> list[np.ndarray]:
        """The vision encoder's output for each image chunk of `prompt` (Idefics3: grid tiles,
        then the overview image; in prompt order), [tokens, n_embd] each; the cache is untouched."""
        self._check_open()
        return [self._embedding(span) for span in prompt.images]

    def _embedding(self, span: ImageSpan) -> np.ndarray:
        """The image's embeddings, kept on the span: a conversation encodes its image once."""
        if span.embedding is None:
            cpp = self._mtmd_cpp
            start = time.perf_counter()
            status = cpp.mtmd_encode_chunk(self._mtmd, span.chunk)
            if status != 0:
                raise DataError(f"{self.mmproj}: libmtmd could not encode the image ({status})")
            n_embd = self._cpp.llama_model_n_embd_inp(self.llm.model)
            pointer = cpp.mtmd_get_output_embd(self._mtmd)
            flat = np.ctypeslib.as_array(pointer, shape=(span.n_tokens * n_embd,))
            span.embedding = flat.reshape(span.n_tokens, n_embd).copy()
            self._encode_s += time.perf_counter() - start
            self.encoder_runs += 1
        return span.embedding

    def take_encode_ms(self) -> float:
        """Vision-encoder time since the last call (ms)."""
        ms, self._encode_s = self._encode_s * 1e3, 0.0
        return ms

    # ---- branching
    def snapshot(self) -> SessionState:
        """The sequence's KV state and bookkeeping, to `restore` later (e.g. to branch)."""
        self._check_open()
        size = self._cpp.llama_state_seq_get_size(self._ctx, SEQ)
        buffer = (ctypes.c_uint8 * size)()
        written = self._cpp.llama_state_seq_get_data(self._ctx, buffer, size, SEQ)
        return SessionState(bytes(buffer[:written]), tuple(self.ids), tuple(self.images))

    def restore(self, state: SessionState) -> None:
        """Put the sequence back to a snapshot (the cache's current content is dropped)."""
        self._check_open()
        self._cpp.llama_memory_seq_rm(self._memory, SEQ, -1, -1)
        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if self._cpp.llama_state_seq_set_data(self._ctx, buffer, len(state.data), SEQ) == 0:
            self.ids, self.images = [], []
            raise DataError("llama.cpp could not restore the sequence snapshot")
        self.ids, self.images = list(state.ids), list(state.images)


def gguf_context_length(path: Path) -> int:
    """`{arch}.context_length` of a GGUF (0 when it has none), read from its header alone.

    Also checks the file is a GGUF before llama.cpp sees it. The gguf package's reader parses
    every field and tensor (about 2 s for SmolLM2-135M); this stops at the key."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: GGUF file not found")
    arch = None
    try:
        for key, value in scan_gguf_fields(path, _arch_or_context):
            if key == "general.architecture" and isinstance(value, str):
                arch = value
            elif arch and key == f"{arch}.context_length" and type(value) is int:
                return value
    except ValueError as exc:
        raise ModelSpecError(
            f"{path}: not a readable GGUF model ({exc}); the file is truncated or corrupt: "
            "re-export it with casseat-edge export"
        ) from None
    return 0


def _arch_or_context(key: str) -> bool:
    return key == "general.architecture" or key.endswith(".context_length")


def _mmproj_fields(mmproj: Path) -> dict[str, Any]:
    """The `clip.*` metadata of an mmproj GGUF (read without loading its tensors), checked."""
    if not mmproj.is_file():
        raise ModelSpecError(f"{mmproj}: mmproj file not found")
    try:
        header = read_gguf_header(mmproj, "clip.")
        meta, shapes = header.fields, {t.name: list(t.dims) for t in header.tensors}
    except (ValueError, OSError, IndexError, KeyError, MemoryError) as exc:
        raise ModelSpecError(
            f"{mmproj}: not a readable GGUF mmproj ({exc.__class__.__name__}); re-export it"
        ) from None
    if meta.get("clip.projector_type") not in projectors():
        raise ModelSpecError(
            f"{mmproj}: projector type {meta.get('clip.projector_type')!r} is not supported; "
            f"supported: {', '.join(projectors())}"
        )
    problem = _mmproj_shape_problem(meta, shapes)
    if problem:
        raise ModelSpecError(f"{mmproj}: inconsistent mmproj ({problem}); re-export it")
    return meta


def _mmproj_shape_problem(meta: dict[str, Any], shapes: dict[str, list[int]]) -> str | None:
    """What in the mmproj's hyper-parameters contradicts its tensors (None: nothing).

    libmtmd builds its graph from the hyper-parameters and aborts the process (GGML_ASSERT) when
    they do not fit the tensors, so a crafted or damaged file is refused here instead."""
    get = meta.get
    n_embd, heads = get("clip.vision.embedding_length"), get("clip.vision.attention.head_count")
    patch, side = get("clip.vision.patch_size"), get("clip.vision.image_size")
    merge = get("clip.vision.projector.scale_factor") or get("clip.vision.spatial_merge_size")
    if not all(isinstance(v, int) and v > 0 for v in (n_embd, heads, patch, side, merge)):
        return "embedding length, head count, patch and image size and merge must be > 0"
    if n_embd % heads or side % patch or (side // patch) % merge:
        return f"{n_embd} wide / {heads} heads, image {side} / patch {patch} / merge {merge}"
    if shapes.get("v.patch_embd.weight") != [patch, patch, 3, n_embd]:
        return f"v.patch_embd.weight is {shapes.get('v.patch_embd.weight')}, not patch {patch}"
    blocks = {name.split(".")[2] for name in shapes if name.startswith("v.blk.")}
    if len(blocks) != get("clip.vision.block_count"):
        return f"{len(blocks)} blocks, clip.vision.block_count {get('clip.vision.block_count')}"
    expected = _PROJECTOR_SHAPES[get("clip.projector_type")](n_embd, side // patch, merge)
    for name, shape in expected.items():
        if shapes.get(name, [])[: len(shape)] != shape:
            return f"{name} is {shapes.get(name)}, expected {shape}"
    return None


# projector -> (vision width, patches per side, merge) -> leading dims of the tensors it reads
_PROJECTOR_SHAPES = {
    "idefics3": lambda n, grid, merge: {
        "v.position_embd.weight": [n, grid * grid],
        "mm.model.fc.weight": [n * merge * merge],
    },
    "qwen2vl_merger": lambda n, grid, merge: {"mm.0.weight": [n * merge * merge]},
    "qwen2.5vl_merger": lambda n, grid, merge: {"mm.0.weight": [n * merge * merge]},
}


def _token_limits(meta: dict[str, Any]) -> tuple[int, int]:
    """(image_min_tokens, image_max_tokens) for libmtmd from the pixel bounds the exporter wrote
    (the HF processor's min/max_pixels; libmtmd takes them as tokens). 0: libmtmd's defaults."""
    low = meta.get("clip.vision.image_min_pixels")
    high = meta.get("clip.vision.image_max_pixels")
    if low is None or high is None:
        return 0, 0
    unit = (meta["clip.vision.patch_size"] * meta.get("clip.vision.spatial_merge_size", 1)) ** 2
    return max(1, int(low) // unit), max(1, int(high) // unit)


_LOG_CALLBACK: Any = None


def _NO_CALLBACK() -> Any:  # noqa: N802 - stands for the ctypes NULL function pointer
    from llama_cpp import mtmd_cpp

    return mtmd_cpp.mtmd_helper_post_decode_callback()


def _quiet_mtmd_logs(mtmd_cpp: Any) -> None:
    """libmtmd logs every image it encodes; pass on only its errors (to stderr)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        import sys

        import llama_cpp

        @llama_cpp.llama_log_callback
        def forward_errors(level: int, text: bytes, _: Any) -> None:
            if level == 3:  # GGML_LOG_LEVEL_ERROR
                sys.stderr.write(text.decode("utf-8", errors="replace"))

        _LOG_CALLBACK = forward_errors
    mtmd_cpp.mtmd_helper_log_set(_LOG_CALLBACK, None)
