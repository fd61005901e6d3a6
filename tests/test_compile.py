"""launch.compile: the report's arithmetic on constructed numbers (everywhere), the missing-extra
and bad-input errors (everywhere), and a real compile for a small TPU slice when libtpu is
installed (`pip install -e '.[tpu]'`; .ci/run installs it when it can)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import compile as compile_cli
from trainlab.errors import UsageError
from trainlab.training import aot

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TEST_CONFIG = ["--config", "experiments/lm.py:size=test", "--config.model.scan_layers=true",
               "--config.model.num_layers=2", "--config.data.name=tokens",
               "--config.data.vocab_size=256"]


def test_matmul_flops_counts_every_scan_iteration_and_the_costliest_branch():
  m, k, n, length = 3, 7, 5, 4

  def step(x_MxK, w_LxKxK, v_KxN, flag):
    def body(h, w):
      return h @ w, None
    h_MxK, _ = jax.lax.scan(body, x_MxK, w_LxKxK)
    cheap = lambda h: h[:, :n] * 2.0
    costly = lambda h: (h @ v_KxN) @ jnp.ones((n, n))
    return jax.lax.cond(flag, costly, cheap, h_MxK)

  jaxpr = jax.make_jaxpr(step)(np.ones((m, k)), np.ones((length, k, k)), np.ones((k, n)), True)
  scan_body, branch = 2 * m * k * k, 2 * m * k * n + 2 * m * n * n
  assert aot.matmul_flops(jaxpr) == length * scan_body + branch
  assert aot.matmul_flops(jaxpr, loops=False) == scan_body + branch


def test_roofline_adds_the_uncounted_iterations_and_takes_the_slower_bound():
  chip = aot.Chip("test", peak_flops=100.0, hbm_bytes=0, hbm_bandwidth=10.0, source="")
  cost = aot.roofline(compiler_flops=1000.0, compiler_bytes=50.0, matmul_all=4000.0,
                      matmul_once=1000.0, chip=chip)
  # 3000 matmul FLOPs in iterations XLA did not count: 4000 FLOPs, bytes scaled by 4.
  assert cost == {"flops": 4000.0, "hbm_bytes_accessed": 200.0, "step_s": 40.0}
  memory_bound = aot.roofline(1000.0, 5000.0, 1000.0, 1000.0, chip)
  assert memory_bound["step_s"] == 500.0
  assert aot.roofline(None, None, 4000.0, 1000.0, chip)["step_s"] is None  # GPU: no cost model
  # 6 N D / chips / peak / time: 6 * 10 * 20 / 4 / 100 / 5 = 0.6
  assert aot.mfu(params=10, tokens_per_step=20, chips=4, peak_flops=100.0, step_s=5.0) == \
      pytest.approx(0.6)


def test_memory_report_counts_donated_buffers_once():
  stats = types.SimpleNamespace(argument_size_in_bytes=100, output_size_in_bytes=90,
                                alias_size_in_bytes=80, temp_size_in_bytes=30,
                                generated_code_size_in_bytes=5)
  report = aot.memory_report(stats, hbm_bytes=1000)
  assert report["total"] == 100 + 90 - 80 + 30 + 5
  assert report["hbm"] == 1000


def test_collectives_are_counted_by_opcode_not_by_name():
  hlo = "\n".join([
      "%all-gather.3 = bf16[8,32]{1,0} all-gather(%p0), dimensions={0}",
      "%all-reduce-start.1 = f32[] all-reduce-start(%x), to_apply=%add",
      "%all-reduce-done.1 = f32[] all-reduce-done(%all-reduce-start.1)",
      "%ar = (f32[2], f32[2]) all-reduce(%a, %b), to_apply=%add",
      "%all-reduce-scatter (input: f32[8]) -> f32[2] {",
      "%rs = f32[2] reduce-scatter(%all-gather.3), dimensions={0}",
      "%cp = f32[2] collective-permute(%rs), source_target_pairs={{0,1}}",
      "%fusion = f32[2] fusion(%all-gather.3, %all-to-all.2), kind=kLoop",
  ])
  assert aot.count_collectives(hlo) == {"all-reduce": 2, "all-gather": 1, "reduce-scatter": 1,
                                        "all-to-all": 0, "collective-permute": 1}


def _report(**changes):
  report = {"topology": "v5e:2x2", "chips": 4, "per_chip_batch": 8, "accumulation_steps": 1,
            "mesh": {"data": 4, "fsdp": 1, "tensor": 1},
            "per_chip_bytes": {"total": 20 * aot.GIB, "temporaries": 15 * aot.GIB,
                               "hbm": 16 * aot.GIB},
            "eval": {"per_chip_bytes": {"total": aot.GIB, "hbm": 16 * aot.GIB}}}
  report.update(changes)
  return report


def test_does_not_fit_names_the_excess_and_only_levers_not_in_use(tiny_config):
  tiny_config.model.remat = "full"
  line = aot.does_not_fit(tiny_config, _report())
  assert "\n" not in line
  assert "the train step needs 20.0 GiB per chip, 4.0 GiB over the 16.0 GiB HBM" in line
  assert "--config.model.dtype=bfloat16" in line and "accumulation_steps=2" in line
  assert "--config.mesh.fsdp=4" in line and "--config.loss.chunk_size" in line
  assert "remat=full" not in line  # already in use
  assert not aot.fits(_report())
  fitting = _report(per_chip_bytes={"total": aot.GIB, "hbm": 16 * aot.GIB})
  assert aot.fits(fitting) and aot.does_not_fit(tiny_config, fitting) == ""


def test_the_compilers_out_of_memory_is_reported_with_its_own_limit(tiny_config):
  exhausted = {"temporaries": 37.5 * aot.GIB, "total": 37.5 * aot.GIB, "hbm": 16 * aot.GIB,
               "compiler_limit": 15.75 * aot.GIB}
  line = aot.does_not_fit(tiny_config, _report(per_chip_bytes=exhausted,
                                               resource_exhausted="RESOURCE_EXHAUSTED: ..."))
  assert "37.5 GiB of temporaries per chip alone, 21.8 GiB over the 15.75 GiB" in line
  assert "remat=full" in line


def test_shapes_only_dataset_needs_no_shards(tiny_config):
  tiny_config.data.name, tiny_config.data.vocab_size = "tokens", 256
  tiny_config.data.path = "/nonexistent/*.bin"
  dataset = aot.shapes_only_dataset(tiny_config)
  batch = dataset.train_batch(7)
  assert batch["inputs"].shape == (tiny_config.batch_size, tiny_config.data.seq_len)
  assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
  assert dataset.num_classes == 256 and dataset.input_shape == (tiny_config.data.seq_len,)
  tiny_config.data.vocab_size = 0
  with pytest.raises(UsageError, match="data.vocab_size"):
    aot.shapes_only_dataset(tiny_config)


def test_topology_flag_is_taken_out_of_the_command_line():
  assert compile_cli._pop_topology(["p", "--topology", "v5e:2x2", "--workdir", "w"]) == \
      ("v5e:2x2", ["p", "--workdir", "w"])
  assert compile_cli._pop_topology(["p", "--topology=8xH100"])[0] == "8xH100"
  with pytest.raises(UsageError, match="--topology is required"):
    compile_cli._pop_topology(["p", "--config", "x.py"])


def test_bad_topology_names_are_a_usage_error():
  with pytest.raises(UsageError, match="not a slice name"):
    aot.target("v5e-16")


def test_missing_tpu_extra_says_which_extra_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` now raises ImportError
  with pytest.raises(UsageError, match=r"pip install -e '\.\[tpu\]'"):
    aot.target("v5e:2x2")


def test_missing_extra_is_one_line_and_exit_2():
  """The entry point as a user runs it, in a Python where `import libtpu` fails."""
  code = ("import sys, runpy; sys.modules['libtpu'] = None; sys.argv[0] = 'launch.compile'; "
          "runpy.run_module('launch.compile', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code, *TEST_CONFIG, "--topology", "v5e:2x2"],
                        cwd=compile_cli.cli.REPO, capture_output=True, text=True, timeout=1800,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "pip install -e '.[tpu]'" in lines[0], proc.stderr


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'); "
                    "the compile itself is tested where it can be installed")
def test_compiles_a_small_scanned_config_for_a_tpu_slice(run_module, tmp_path):
  result = run_module("launch.compile", *TEST_CONFIG, "--topology", "v5e:2x2",
                      "--workdir", str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((tmp_path / "compile_report.json").read_text())
  for key in ("arguments", "outputs", "temporaries", "total", "hbm"):
    assert report["per_chip_bytes"][key] > 0, key
  assert report["per_chip_bytes"]["total"] < report["per_chip_bytes"]["hbm"] and report["fits"]
  assert report["chips"] == 4 and report["device_kind"].startswith("TPU v5")
  assert report["flops"] >= report["model_flops"] > 0
  assert 0 < report["mfu_estimate"] < 1 and report["estimated_step_s"] > 0
  assert report["compile_s"] > 0 and report["eval"]["per_chip_bytes"]["total"] > 0
  assert set(report["collectives"]) == set(aot.COLLECTIVES)
  assert report["collectives"]["all-reduce"] > 0  # data parallel: the gradients are summed


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]')")
def test_a_config_that_does_not_fit_exits_2_with_one_line(run_module, tmp_path):
  result = run_module("launch.compile", *TEST_CONFIG, "--config.data.seq_len=32768",
                      "--config.model.context_len=32768", "--topology", "v5e:2x2",
                      "--workdir", str(tmp_path))
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: does not fit v5e:2x2: the train step needs"), lines[-1]
  assert "GiB" in lines[-1] and "try" in lines[-1]
  assert not json.loads((tmp_path / "compile_report.json").read_text())["fits"]
