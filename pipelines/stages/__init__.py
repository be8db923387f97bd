"""The pipeline's stages (docs/pipeline.md): one function per phase of the paper's loop, each
reading its declared inputs and writing its declared outputs, and :func:`run_stage`, which is what
``dvc repro`` (through ``iris stage``), the Prefect flow and the in-process loop all call."""

from pipelines.stages.runner import StageSpec, parse_stage, run_stage, stage_order

__all__ = ["StageSpec", "parse_stage", "run_stage", "stage_order"]
