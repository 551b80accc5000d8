"""The fast GGUF header reader (`casseat_edge.formats.gguf_header`) against the gguf package's
`GGUFReader`: every metadata value, every tensor's name, dims, type, byte range and data, on the
packaged SmolLM2 GGUF (49k-token vocabulary, Q4_1 blocks) and on a vision export's text model and
mmproj (f32, q8_0, f16, arrays of floats); cut-off and foreign files are one ValueError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from casseat_edge.config import load_config
from casseat_edge.formats.gguf_header import read_gguf_header, scan_gguf_fields, tensor_data
from tests.conftest import has_module

pytestmark = pytest.mark.skipif(
    not (has_module("llama_cpp") and has_module("gguf")), reason="needs llama-cpp-python and gguf"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from casseat_edge.models.embedded import embedded_gguf
    from export.gguf import GgufExportConfig, export_gguf

    out = tmp_path_factory.mktemp("gguf-header") / "vlm"
    values = {"model": "tiny:smolvlm", "out": str(out), "quant": "q8_0", "mmproj_quant": "f16"}
    export_gguf(load_config(GgufExportConfig, overrides={**values, "verify": False}))
    return [embedded_gguf(), out / "model-q8_0.gguf", out / "mmproj-f16.gguf"]


def _same(a, b) -> bool:
    if type(a) is not type(b):  # 1 == 1.0 == True would hide a wrong type
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and np.isclose(a, b))


def test_fields_and_tensors_equal_gguf_readers(files) -> None:
    import gguf

    for path in files:
        header, reader = read_gguf_header(path), gguf.GGUFReader(str(path))
        expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert set(header.fields) == set(expected), path
        for key, value in expected.items():
            assert _same(value, header.fields[key]), (path, key)
        assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
        for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
            assert ours.kind == theirs.tensor_type and ours.n_bytes == int(theirs.n_bytes)
            assert ours.dims == tuple(int(n) for n in theirs.shape)
            assert ours.offset == int(theirs.data_offset) and ours.n_elements == theirs.n_elements
            data = tensor_data(header, ours)
            assert data.dtype == theirs.data.dtype and data.shape == theirs.data.shape
            np.testing.assert_array_equal(data, theirs.data)
    kinds = {t.kind.name for path in files for t in read_gguf_header(path, ()).tensors}
    assert {"Q4_1", "Q8_0", "F16", "F32"} <= kinds


def test_only_the_keys_asked_for_are_decoded(files) -> None:
    path = files[0]
    assert read_gguf_header(path, ()).fields == {}
    fields = read_gguf_header(path, ("tokenizer.ggml.model", "general.arch")).fields
    assert fields == {"tokenizer.ggml.model": "gpt2", "general.architecture": "llama"}
    wanted = read_gguf_header(path, lambda key: key.endswith(".context_length")).fields
    assert wanted == {"llama.context_length": 8192}
    scanned = dict(scan_gguf_fields(path, "general.architecture"))
    assert scanned["general.architecture"] == "llama" and scanned["tokenizer.ggml.tokens"] is None


def test_writable_view_changes_the_file(files, tmp_path) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copy(files[1], copy)
    header = read_gguf_header(copy, ())
    info = next(t for t in header.tensors if t.kind.name == "Q8_0")
    view = tensor_data(header, info, writable=True)
    view[0, :2] = [0, 60]  # block 0's f16 scale: 0x3c00 = 1.0
    view.flush()
    del view
    again = tensor_data(read_gguf_header(copy, ()), info)
    assert again[0, :2].tolist() == [0, 60] and copy.stat().st_size == files[1].stat().st_size


def test_cut_off_and_foreign_files_are_value_errors(files, tmp_path) -> None:
    data = files[0].read_bytes()
    for name, content, message in [
        ("empty.gguf", b"", "shorter than a GGUF header"),
        ("text.gguf", b"not a gguf at all, just some words", "no GGUF magic"),
        ("header.gguf", data[:5000], "runs past the end of the file"),
        ("big-endian.gguf", data[:4] + (3).to_bytes(4, "big") + data[8:], "GGUF version 50331648"),
        ("tensors.gguf", data[: len(data) // 2], "runs past the end of the file"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_gguf_header(tmp_path / name)
