"""``offgrid tune MODEL``: find the engine flags that serve a model fastest on this box
(``engine.tune``) and keep them for the scheduler."""

from __future__ import annotations

from typing import Annotated

import typer

from offgrid.cli.common import settings_from


def tune(
    model: Annotated[str, typer.Argument(help="Model id")],
    budget: Annotated[
        float, typer.Option(help="Seconds the search may take (the last trial ends after)")
    ] = 170.0,
) -> None:
    """Measure threads, flash attention, KV cache type, micro-batch and a draft model for
    MODEL on this machine; keep the fastest flags (the server uses them from the model's
    next start)."""
    from offgrid.engine.build import find_engine
    from offgrid.engine.tune import Trial, save
    from offgrid.engine.tune import tune as search
    from offgrid.errors import BadRequestError
    from offgrid.models.registry import Registry

    settings = settings_from()
    registry = Registry.for_settings(settings)
    chosen = registry.checked(model)
    if chosen.kind != "chat" or chosen.gguf is None:
        raise BadRequestError(f"{model} is not a chat model: only those are tuned.")
    vocab = chosen.gguf.vocab_size
    drafts = [
        m.path
        for m in registry.list()
        if m.id != chosen.id
        and m.kind == "chat"
        and m.gguf
        and m.gguf.vocab_size == vocab
        and m.size * 2 <= chosen.size
    ]

    def heard(knob: str, trial: Trial | None) -> None:
        if trial is None:
            print(f"  {knob:<22} refused by the engine")
            return
        flags = " ".join(trial.args) or "(llama-server's defaults)"
        print(f"  {knob:<22} {trial.score:7.1f} tok/s   {flags}", flush=True)

    print(f"Tuning {chosen.id} (about {budget:.0f} s; each trial starts the engine):")
    found = search(find_engine(settings).path, chosen, drafts, budget=budget, heard=heard)
    path = save(settings.data_dir, found)
    flags = " ".join(found.args) or "llama-server's defaults"
    print(
        f"Best: {flags}: {found.score:.1f} tok/s, {found.ratio:.2f}× llama-server's defaults "
        f"({found.baseline:.1f}), in {found.seconds:.0f} s. Kept in {path}; the server uses "
        "them from the model's next start."
    )
