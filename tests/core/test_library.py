"""The model library: the Hugging Face cache listed and deleted through huggingface_hub's cache API, GGUF
files read from their headers, downloads from a loopback fake Hub with progress, cancel and gated errors."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import huggingface_hub
import pytest
from fakehub import COMMIT, FakeHub, cache_model
from qlora_studio.core.model import download as dl
from qlora_studio.core.model import library as lib


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A temporary HF_HUB_CACHE (the variable, and huggingface_hub's constant read at import)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_cache_listing_and_delete_through_the_cache_api(hub_cache, tiny_model):
    files = {p.name: p.read_bytes() for p in Path(tiny_model).iterdir() if p.is_file()}
    repo = cache_model(hub_cache, "org/tiny-llama", files)
    cache_model(hub_cache, "org/lora", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 64}, "b" * 40)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    cache_model(hub_cache, "org/half", {"config.json": files["config.json"], "model-00001-of-00002.safetensors": b"x",
                                        "model.safetensors.index.json": json.dumps(index).encode()}, "c" * 40)
    library = lib.scan_library()
    assert library.cache_dir == hub_cache
    models = {m.name: m for m in library.models}
    tiny = models["org/tiny-llama"]
    assert (tiny.kind, tiny.architecture, tiny.revision, tiny.trainable) == ("hub", "LlamaForCausalLM", "a" * 40, True)
    assert tiny.size_bytes == sum(len(d) for d in files.values())
    from safetensors import safe_open

    with safe_open(Path(tiny_model) / "model.safetensors", "pt") as st:  # the header count is the real one
        assert tiny.params == sum(st.get_tensor(k).numel() for k in st.keys())
    assert models["org/lora"].problem == "a LoRA adapter, not a base model"
    assert models["org/half"].problem == "incomplete download: 1 weight file missing"

    assert lib.delete_cached_model("org/tiny-llama", dry_run=True) == tiny.size_bytes and repo.exists()
    assert lib.delete_cached_model("org/tiny-llama") == tiny.size_bytes
    assert not repo.exists()
    assert "org/tiny-llama" not in {m.name for m in lib.scan_library().models}
    with pytest.raises(lib.LibraryError, match="not in the Hugging Face cache"):
        lib.delete_cached_model("org/tiny-llama")


def test_gguf_files_in_a_folder(tmp_path):
    import gguf
    import numpy as np

    folder = tmp_path / "ggufs"
    folder.mkdir()
    writer = gguf.GGUFWriter(folder / "toy.gguf", "llama")
    writer.add_name("Toy Llama")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(500)])  # arrays are skipped, not parsed
    writer.add_tensor("token_embd.weight", np.zeros((32, 8), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float16))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    (folder / "broken.gguf").write_bytes(b"not a gguf file")
    models = {Path(m.name).name: m for m in lib.scan_library([folder], cache_dir=tmp_path / "no-cache").models}
    toy = models["toy.gguf"]
    assert (toy.kind, toy.architecture, toy.params, toy.trainable) == ("gguf", "llama", 32 * 8 + 8 * 8, True)
    assert toy.notes == ("Toy Llama",) and toy.size_bytes == (folder / "toy.gguf").stat().st_size
    assert not models["broken.gguf"].trainable and "not a readable GGUF file" in models["broken.gguf"].problem


FILES = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode(),
         "model.safetensors": os.urandom(1_500_000), "tokenizer.json": b"{}"}


@pytest.fixture
def online(monkeypatch):
    """Downloads from the loopback fake Hub even where HF_HUB_OFFLINE=1 holds for everything else."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # several updates per file
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # for spawned children
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def test_download_progress_cancel_and_gated(hub_cache, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NeverShowThisToken")
    seen: list[dl.Progress] = []
    cancel = threading.Event()
    with FakeHub({"org/tiny": FILES, "meta-llama/Llama-3.2-1B": FILES}, gated={"meta-llama/Llama-3.2-1B"},
                 chunk=32 * 1024, delay=0.002) as hub:
        def on_progress(p: dl.Progress) -> None:
            seen.append(p)
            if p.bytes_done > 300_000:
                cancel.set()

        with pytest.raises(dl.DownloadCancelled):
            dl.download_model("org/tiny", endpoint=hub.endpoint, on_progress=on_progress, cancel=cancel, max_workers=1,
                              allow_patterns=["model.safetensors"])
        assert lib.scan_library().incomplete_bytes == 0  # huggingface_hub removed the partial file itself
        seen.clear()
        path = dl.download_model("org/tiny", endpoint=hub.endpoint, on_progress=seen.append)
        with pytest.raises(lib.LibraryError) as gated:
            dl.download_model("meta-llama/Llama-3.2-1B", endpoint=hub.endpoint)
    assert path == hub_cache / "models--org--tiny" / "snapshots" / COMMIT
    assert seen[-1].bytes_done == seen[-1].bytes_total == sum(map(len, FILES.values()))
    assert any(0 < p.bytes_done < p.bytes_total for p in seen) and (seen[-1].files_done, seen[-1].files_total) == (3, 3)
    (model,) = [m for m in lib.scan_library().models if m.name == "org/tiny"]
    assert model.trainable and model.architecture == "LlamaForCausalLM"
    assert "gated" in str(gated.value) and "hf auth login" in str(gated.value)
    assert "hf_NeverShowThisToken" not in str(gated.value)


def test_download_process_cancels_and_the_download_command_finishes(hub_cache, online, monkeypatch, capsys):
    big = {**FILES, "model.safetensors": os.urandom(24_000_000)}  # the child reads 10 MiB at a time
    with FakeHub({"org/tiny": big}, chunk=256 * 1024, delay=0.02) as hub:
        job = dl.DownloadProcess("org/tiny", cache_dir=str(hub_cache), endpoint=hub.endpoint).start()
        while job.poll() and job.progress.bytes_done < 1_000_000:  # the first 10 MiB of the weights
            threading.Event().wait(0.02)
        assert 0 < job.progress.bytes_done < job.progress.bytes_total and job.error is None
        job.cancel()
        assert not job.process.is_alive() and job.result is None
        assert lib.delete_incomplete() > 0  # a killed child leaves its partial file: removed here
        assert lib.scan_library().incomplete_bytes == 0
        shutil.rmtree(hub_cache / "models--org--tiny")
    from qlora_studio.core.cli import main

    with FakeHub({"org/tiny": FILES}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # read by the download's own process
        assert main(["download", "org/tiny"]) == 0
    out = capsys.readouterr()
    assert f"downloaded org/tiny into {hub_cache / 'models--org--tiny' / 'snapshots' / COMMIT}" in out.out
    assert "org/tiny: 100.0% of 1.4 MiB, 3/3 files" in out.err
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed["models"]] == ["org/tiny"] and listed["models"][0]["problem"] is None
