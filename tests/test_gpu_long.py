"""train_scripts/gpu_long.py: what a GPU call leaves in $OUT (no GPU needed for these parts)."""
import importlib.util
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("gpu_long", ROOT / "train_scripts" / "gpu_long.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_files_are_packed_in_chunks_that_come_back(tmp_path, monkeypatch):
    g = load()
    monkeypatch.setattr(g, "CHUNK", 3000)
    work, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    for i in range(5):
        d = work / "long" / "main" / f"run{i}"
        d.mkdir(parents=True)
        (d / "deploy.safetensors").write_bytes(bytes([i]) * 1200)
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "model.safetensors").write_bytes(b"x" * 5000)  # never packed
    names = g._pack_deploy(work, out, max_files=6)
    assert names == ["deploy-0.tgz", "deploy-1.tgz", "deploy-2.tgz"]  # 2 + 2 + 1 files under the chunk size
    members = []
    for n in names:
        with tarfile.open(out / n) as tar:
            members += tar.getnames()
    assert sorted(members) == [f"long/main/run{i}/deploy.safetensors" for i in range(5)]
    assert g._pack_deploy(work, tmp_path, max_files=1) == ["deploy-0.tgz"]  # the file limit of a call's $OUT
