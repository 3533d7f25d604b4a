"""A Lifeboat plan step written in Python: records a note in the run's kv store.

with = { key = "note.db", value = "failed over by {run.id}" }, allow = { kv = ["note.*"] }

Build: componentize-py -d ../../../wit -w step componentize app --stub-wasi -o kv-note.wasm
"""

import json

import wit_world
from wit_world.imports import kv, log, types
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="kv-note",
            version="0.1.0",
            api_version="0.1.1",
            config_schema=None,
            capabilities=[types.Capability.KV_WRITE],
        )

    def validate(self, config: str, context: types.StepContext) -> list[str]:
        try:
            parsed = json.loads(config or "{}")
        except ValueError as e:
            return [f"config is not JSON: {e}"]
        problems = [f"unknown config key `{k}`" for k in parsed if k not in ("key", "value")]
        if not isinstance(parsed.get("key"), str):
            problems.append("`key` (a string) is required")
        return problems

    def run(self, config: str, context: types.StepContext) -> str:
        parsed = json.loads(config or "{}")
        key = parsed.get("key")
        if not isinstance(key, str):
            raise Err(types.Error_Invalid("`key` is required"))
        value = str(parsed.get("value", ""))
        kv.set(key, value)
        log.log(log.Level.INFO, f"{key} = {value} ({context.operation.name.lower()} run {context.run_id})")
        return json.dumps({"key": key})

    def undo(self, config: str, context: types.StepContext, outputs: str) -> None:
        return None
