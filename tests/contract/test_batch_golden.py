"""Golden batch scripts: the exact text rendered for a native and an Apptainer recipe.

Rewrite the golden files after an intended change: UPDATE_GOLDEN=1 .venv/bin/pytest \
tests/contract/test_batch_golden.py
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from aifb.server.batch import apptainer_argv, render_batch_script
from aifb.server.deploy import ResourceRequest
from aifb.server.jobs import ContainerSpec
from aifb.server.recipes.catalog import RecipeCatalog
from aifb.server.recipes.resolve import build_job_spec, resolve

pytestmark = pytest.mark.contract

GOLDEN = Path(__file__).resolve().parent / "golden"
ENV = {"AIFB_SERVER": "login1:50051", "AIFB_SERVICE": "services/svc42",
       "AIFB_REPORT_TOKEN": "tok-123",
       "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def render(recipe: str, params: Mapping[str, str], resources: ResourceRequest | None) -> str:
    resolved = resolve(RecipeCatalog().get(recipe), params, resources)
    spec = build_job_spec(resolved, service_id="svc42", job_name=f"aifb-{recipe}-svc42",
                          workdir="/home/alice/.aifb/jobs/svc42",
                          python="/opt/aifb/venv/bin/python", environment=ENV)
    return render_batch_script(spec)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()


def test_redis_native_script_matches_golden() -> None:
    check_golden("redis.sh", render("redis", {"maxmemory": "1gb"},
                                    ResourceRequest(partition="debug", account="proj1")))


def test_redis_auto_port_script_matches_golden() -> None:
    check_golden("redis-auto-port.sh", render("redis", {"port": "0"}, None))


def test_vllm_apptainer_gpu_script_matches_golden() -> None:
    text = render("vllm", {"model": "meta-llama/Llama-3.1-8B-Instruct"},
                  ResourceRequest(gpus=2, time_limit_minutes=2 * 24 * 60 + 90))
    assert " --nv " in text and "#SBATCH --gres=gpu:2\n" in text
    check_golden("vllm.sh", text)


def test_vllm_on_two_nodes_starts_a_ray_worker_with_srun_in_the_container() -> None:
    text = render("vllm-multinode", {"model": "meta-llama/Llama-3.1-70B-Instruct",
                                     "tensor_parallel_size": "4"},
                  ResourceRequest(nodes=2, gpus=4))
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --ntasks=2\n" in text
    assert "{{ head_host }}:6379" in text  # filled in by the job
    check_golden("vllm-multinode.sh", text)


def test_apptainer_argv_puts_nv_binds_and_env_before_the_image() -> None:
    argv = apptainer_argv(ContainerSpec(image="docker://x/y:1", binds=("/data:/data",),
                                        env={"B": "2", "A": "1"}, nv=True))
    assert argv == ["apptainer", "exec", "--nv", "--bind", "/data:/data", "--env", "A=1",
                    "--env", "B=2", "docker://x/y:1"]
