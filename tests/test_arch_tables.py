"""One registry entry per architecture (`ArchSpec`) holds the structural facts every stage used to
keep in its own table (training parts, bitsandbytes' float modules, the GGUF decoder and mmproj,
the ONNX graphs, llama.cpp's projector and image token):

- each stage's view, for every registered name (aliases too), is what the entry says;
- on the tiny model of each architecture the entry's module prefixes name real modules and
  state-dict keys, every parameter falls in exactly one part, and bitsandbytes keeps exactly the
  vision and connector parts float;
- no module outside `casseat_edge/models/` names an HF architecture except to look it up, so a
  per-architecture table cannot grow back (the scan is shown to catch one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from casseat_edge.errors import UnsupportedArchError
from casseat_edge.models import arch_names, load_model, resolve_model, tiny_names
from casseat_edge.registry import ARCHS
from tests.conftest import has_module

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = [arch for _, arch in ARCHS.items()]
NAMES = [(name, arch) for arch in ENTRIES for name in arch.names()]  # aliases included
NAME_IDS = [name for name, _ in NAMES]
TINY = sorted(tiny_names())
UNKNOWN = "GPT2LMHeadModel"
OLD_NAMES = {  # every name the removed stage tables knew (each was GGUF-exportable)
    "Idefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
}


def _names_of(accept) -> list[str]:  # noqa: ANN001
    return sorted(name for name, arch in NAMES if accept(arch))


# ------------------------------------------------------------------ derived tables == entry facts
def test_the_registry_knows_every_name_the_old_tables_knew():
    assert set(NAME_IDS) >= OLD_NAMES
    assert ARCHS.get("SmolVLMForConditionalGeneration") is ARCHS.get(
        "Idefics3ForConditionalGeneration"
    )
    assert ARCHS.get("MistralForCausalLM") is ARCHS.get("LlamaForCausalLM")


@pytest.mark.parametrize(("name", "arch"), NAMES, ids=NAME_IDS)
def test_training_parts_are_the_entry_parts(name, arch):
    from training.sft.model import parts_for

    parts = parts_for(name)
    assert parts == arch.parts()
    assert parts["lm"] == (arch.text_prefix, arch.lm_head)
    assert bool(parts["vision"]) == bool(parts["connector"]) == arch.vision


@pytest.mark.parametrize(("name", "arch"), NAMES, ids=NAME_IDS)
def test_bnb_float_modules_are_vision_connector_and_head(name, arch):
    from quantize.bnb import float_modules

    assert float_modules(ARCHS.get(name)) == [
        arch.lm_head,
        *arch.vision_prefixes,
        *arch.connector_prefixes,
    ]


def test_gguf_tables_follow_the_entries():
    import gguf

    from export.gguf import GgufExporter, exportable, supported_architectures
    from export.gguf.mmproj import MMPROJ_PROJECTORS
    from export.gguf.text import supported_text_archs

    kinds = gguf.VisionProjectorType
    projectors = {getattr(kinds, k) for k in dir(kinds) if k.isupper()}
    for arch in ENTRIES:
        assert arch.gguf_arch is None or hasattr(gguf.MODEL_ARCH, arch.gguf_arch), arch
        assert arch.mmproj_projector is None or arch.mmproj_projector in projectors, arch
    for projector, spec in MMPROJ_PROJECTORS.items():
        assert spec.projector == projector
        assert any(arch.mmproj_projector == projector for arch in ENTRIES), f"{projector}: unused"
    assert supported_text_archs() == _names_of(lambda a: a.gguf_arch is not None)
    supported = _names_of(
        lambda a: (
            a.gguf_arch is not None and (not a.vision or a.mmproj_projector in MMPROJ_PROJECTORS)
        )
    )
    assert supported_architectures() == supported == _names_of(exportable)
    assert GgufExporter.describe()["architectures"] == supported
    assert set(supported) >= OLD_NAMES  # as before the tables were derived


@pytest.mark.parametrize(("name", "arch"), NAMES, ids=NAME_IDS)
def test_gguf_text_and_mmproj_lookups_use_the_entry(name, arch):
    from types import SimpleNamespace

    from casseat_edge.formats.ggml_quant import text_arch
    from export.gguf.mmproj import MMPROJ_PROJECTORS, mmproj_spec

    model = SimpleNamespace(config=SimpleNamespace(architectures=[name]))
    assert text_arch(SimpleNamespace(model=model, arch=None)) is arch
    if arch.vision:
        assert mmproj_spec(model) is MMPROJ_PROJECTORS[arch.mmproj_projector]
    else:
        with pytest.raises(UnsupportedArchError, match="mmproj export of"):
            mmproj_spec(model)


@pytest.mark.parametrize(("name", "arch"), NAMES, ids=NAME_IDS)
def test_onnx_family_follows_the_entry(name, arch):
    from export.onnx.graphs import VISION_GRAPHS, family_for, has_onnx, onnx_architectures

    assert onnx_architectures() == _names_of(has_onnx)
    if arch.vision and arch.onnx_vision is None:
        with pytest.raises(UnsupportedArchError, match=f"ONNX export of '{name}'.*supported: "):
            family_for(name)
        return
    family = family_for(name)
    assert family.architecture == arch.architecture
    assert family.position_rows == (3 if arch.mrope else 1)
    graph = VISION_GRAPHS[arch.onnx_vision] if arch.vision else None
    assert family.vision is graph
    assert family.vision_inputs == (graph.input_names if graph else ())


def test_onnx_supports_what_it_did_and_no_graph_is_unused():
    from export.onnx.graphs import VISION_GRAPHS, onnx_architectures

    assert {arch.onnx_vision for arch in ENTRIES if arch.vision} - {None} == set(VISION_GRAPHS)
    before = {
        "Idefics3ForConditionalGeneration",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2VLForConditionalGeneration",
    }
    assert before <= set(onnx_architectures())
    assert "Qwen2_5_VLForConditionalGeneration" not in onnx_architectures()


def test_llama_cpp_projector_facts_agree_with_mtmd():
    """The libmtmd driver's projector -> (architecture, image token) view is the entries' facts,
    and covers every projector the GGUF exporter writes."""
    from casseat_edge.formats.mtmd import projectors
    from export.gguf.mmproj import MMPROJ_PROJECTORS

    expected = {
        "idefics3": ("Idefics3ForConditionalGeneration", "<image>"),
        "qwen2vl_merger": ("Qwen2VLForConditionalGeneration", "<|image_pad|>"),
        "qwen2.5vl_merger": ("Qwen2_5_VLForConditionalGeneration", "<|image_pad|>"),
    }
    assert projectors() == expected
    assert set(projectors()) == set(MMPROJ_PROJECTORS)


def test_unknown_architectures_name_what_is_supported():
    from types import SimpleNamespace

    from casseat_edge.formats.ggml_quant import text_arch
    from export.gguf.mmproj import has_mmproj, mmproj_spec
    from export.gguf.text import supported_text_archs
    from export.onnx.graphs import family_for, onnx_architectures
    from training.sft.model import parts_for

    model = SimpleNamespace(config=SimpleNamespace(architectures=[UNKNOWN]))
    cases = [
        (lambda: parts_for(UNKNOWN), "training", arch_names()),
        (lambda: text_arch(SimpleNamespace(model=model)), "GGUF export", supported_text_archs()),
        (lambda: mmproj_spec(model), "mmproj export", arch_names(has_mmproj)),
        (lambda: family_for(UNKNOWN), "ONNX export", onnx_architectures()),
        (lambda: family_for(None), "ONNX export", onnx_architectures()),
    ]
    for call, what, supported in cases:
        with pytest.raises(UnsupportedArchError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"{what} of ") and "not supported; supported: " in message
        assert all(name in message for name in supported), message


# ------------------------------------------------------------------ the facts on real tiny models
def _matches(name: str, parts: dict[str, tuple[str, ...]]) -> list[tuple[int, str]]:
    return [
        (len(prefix), part)
        for part, prefixes in parts.items()
        for prefix in prefixes
        if name == prefix or name.startswith(prefix + ".")
    ]


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    return load_model(f"tiny:{request.param}")


def test_every_registered_architecture_is_checked_on_a_tiny_model():
    assert sorted(arch.architecture for arch in tiny_names().values()) == ARCHS.names()


def test_prefixes_name_real_modules_and_state_dict_keys(tiny):
    model, arch = tiny.model, tiny.arch
    state = model.state_dict()
    for part, prefixes in arch.parts().items():
        for prefix in prefixes:
            model.get_submodule(prefix)  # raises if there is no such module
            assert any(key.startswith(prefix + ".") for key in state), (part, prefix)
    decoder = model.get_submodule(arch.text_prefix)
    layers = model.config.get_text_config().num_hidden_layers
    assert len(decoder.layers) == layers and decoder.embed_tokens is model.get_input_embeddings()
    assert f"{arch.text_prefix}.layers.{layers - 1}.self_attn.q_proj.weight" in state
    assert model.get_submodule(arch.lm_head) is model.get_output_embeddings()


def test_every_parameter_falls_in_exactly_one_part(tiny):
    parts = tiny.arch.parts()
    owners: dict[str, set[str]] = {part: set() for part in parts}
    for name in [*dict(tiny.model.named_parameters()), *tiny.model.state_dict()]:
        found = sorted(_matches(name, parts), reverse=True)
        assert found, f"{name} is in no part"
        longest = [part for length, part in found if length == found[0][0]]
        assert len(longest) == 1, f"{name} is in parts {longest}"
        owners[longest[0]].add(name)
    assert {part for part, names in owners.items() if names} == {
        part for part, prefixes in parts.items() if prefixes
    }


def test_mmproj_tensors_are_the_vision_and_connector_parts(tiny):
    if not tiny.arch.vision:
        pytest.skip("text-only")
    from export.gguf.mmproj import mmproj_spec, mmproj_tensors

    parts = tiny.arch.parts()
    state = tiny.model.state_dict()
    vision = [n for n in state if _matches(n, {p: parts[p] for p in ("vision", "connector")})]
    assert vision and len(mmproj_tensors(tiny.model, mmproj_spec(tiny.model))) >= len(vision)
    assert tiny.processor.image_token == tiny.arch.image_token
    assert (
        tiny.tokenizer.convert_tokens_to_ids(tiny.arch.image_token) != tiny.tokenizer.unk_token_id
    )


@pytest.mark.skipif(not has_module("bitsandbytes"), reason="needs bitsandbytes")
def test_bnb_keeps_exactly_vision_and_connector_float(tiny):
    """Quantize the tiny model as `casseat-edge quantize` loads it: every linear of the vision and
    connector parts (and the head) stays float, every other one is quantized."""
    import bitsandbytes as bnb

    from quantize.bnb import BnbInt8, _load_quantized

    arch = tiny.arch
    model = _load_quantized(resolve_model(tiny.ref.spec), tiny, BnbInt8)
    parts = arch.parts()
    float_parts, quantized_parts = set(), set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == arch.lm_head:
            continue
        part = max(_matches(name, parts))[1]
        quantized = isinstance(module, bnb.nn.Linear8bitLt)
        (quantized_parts if quantized else float_parts).add(part)
    assert type(model.get_submodule(arch.lm_head)) is torch.nn.Linear
    assert quantized_parts == {"lm"}
    assert float_parts == ({"vision", "connector"} if arch.vision else set())


# ------------------------------------------------------------------ no table outside the registry
SCANNED = ("casseat_edge", "casseat_cli", "training", "quantize", "export", "runtime")
SCANNED_EXTRA = ("benchmarks", "scripts")
REGISTRY_DIR = "casseat_edge/models"
# files that still name architectures, with the reason; each must still need its entry
ALLOWED: dict[str, str] = {}


def _lookup_arguments(tree: ast.AST) -> set[int]:
    """ids of string constants that are the argument of a registry lookup (`ARCHS.get("X")`)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "ARCHS"
        ):
            found.update(id(arg) for arg in node.args if isinstance(arg, ast.Constant))
    return found


def architecture_mentions(root: Path, names: set[str]) -> dict[str, list[str]]:
    """`path -> ["line: name", ...]` (every scanned file, found or not) for each string constant
    that is exactly an HF architecture name, in the scanned packages outside the registry, unless
    it is the argument of an `ARCHS.get(...)` lookup: a dict keyed by one, a tuple of them on a
    class, a comparison against one all count; prose (docstrings, messages) does not."""
    mentions: dict[str, list[str]] = {}
    for package in (*SCANNED, *SCANNED_EXTRA):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(REGISTRY_DIR + "/"):
                continue
            tree = ast.parse(path.read_text(), rel)
            skip = _lookup_arguments(tree)
            found = [
                f"{node.lineno}: {node.value}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in names and id(node) not in skip
            ]
            mentions[rel] = sorted(found, key=lambda s: int(s.split(":")[0]))
    return mentions


def test_no_architecture_table_outside_the_registry():
    names = set(NAME_IDS)
    mentions = architecture_mentions(ROOT, names)
    # the scan reads where the tables were and every stage, and looks for the aliases too
    must_scan = ["training/sft/model.py", "quantize/bnb.py", "export/gguf/text.py"]
    must_scan += ["export/gguf/mmproj.py", "export/onnx/graphs.py", "runtime/cascade.py"]
    assert set(must_scan) <= set(mentions) and len(mentions) > 50
    assert {"SmolVLMForConditionalGeneration", "MistralForCausalLM"} <= names
    offending = {path: found for path, found in mentions.items() if found and path not in ALLOWED}
    assert offending == {}, "look the architecture up in ARCHS / its ArchSpec instead"
    for path in ALLOWED:  # an entry no longer needed must go
        assert path not in mentions or mentions[path], f"{path} needs no ALLOWED entry any more"


def test_the_table_scan_catches_an_injected_table(tmp_path):
    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / "bnb.py").write_text(
        '"""Keeps Qwen2VLForConditionalGeneration\'s vision tower float."""\n'
        "from casseat_edge.registry import ARCHS\n"
        "FLOAT_PARTS = {\n"
        '    "Idefics3ForConditionalGeneration": ("model.vision_model",),\n'
        '    "Qwen2VLForConditionalGeneration": ("model.visual",),\n'
        "}\n"
        "class Spec:\n"
        '    architectures = ("MistralForCausalLM",)\n'
        "def f(name):\n"
        '    """Looks up LlamaForCausalLM."""\n'
        '    entry = ARCHS.get("LlamaForCausalLM")\n'
        '    return name == "Qwen2ForCausalLM" or entry\n'
    )
    (tmp_path / REGISTRY_DIR).mkdir(parents=True)
    (tmp_path / REGISTRY_DIR / "text.py").write_text('ALIASES = {"MistralForCausalLM": 1}\n')
    assert {k: v for k, v in architecture_mentions(tmp_path, set(NAME_IDS)).items() if v} == {
        "quantize/bnb.py": [
            "4: Idefics3ForConditionalGeneration",
            "5: Qwen2VLForConditionalGeneration",
            "8: MistralForCausalLM",
            "12: Qwen2ForCausalLM",
        ]
    }
