"""`jowa plan`."""

from __future__ import annotations

from typing import Annotated

import typer

from jowa_cli.common import Quiet, emit_json, handle_errors
from jowa_core.games import PLANNING_HORIZON
from jowa_core.planning import DEFAULT_REWARD_MODE


@handle_errors
def plan(
    ckpt: Annotated[str, typer.Option(help="World-action model: a pretrain run or checkpoint directory.")],
    tokenizer: Annotated[
        str, typer.Option(help="Tokenizer: a train-tokenizer run or checkpoint directory, or tokenizer.pt.")
    ],
    game: Annotated[str, typer.Option(help="Game (default: the store's); required for a live game.")] = "",
    data: Annotated[str, typer.Option(help="A <Game>.zarr store to take the state from (else a live game).")] = "",
    index: Annotated[int | None, typer.Option(help="Step of the store to plan from (required with --data).")] = None,
    seed: Annotated[int, typer.Option(help="Live game: ALE seed (and of the random warm-up actions).")] = 0,
    live_steps: Annotated[int, typer.Option(help="Live game: steps played before planning.")] = 16,
    history: Annotated[
        int | None, typer.Option(help="Steps of context, the current one included (default: 8 - horizon).")
    ] = None,
    beam: Annotated[str, typer.Option(help="Beam width K, or auto (the game's width, paper Table 16).")] = "auto",
    horizon: Annotated[int, typer.Option(help="Planning horizon H (imagined steps).")] = PLANNING_HORIZON,
    gamma: Annotated[float, typer.Option(help="Discount of imagined rewards and of Q̂ at the leaves.")] = 0.99,
    imagined_reward: Annotated[
        str, typer.Option(help="Imagined rewards: expected (p(+1) - p(-1), the paper's expectation) or mode "
                                "(argmax, the official planner).")
    ] = DEFAULT_REWARD_MODE,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    png: Annotated[
        str, typer.Option(help="PNG strip of the kept beams' imagined frames (default plan_<game>_<index>.png).")
    ] = "",
    no_png: Annotated[bool, typer.Option("--no-png", help="Do not write the PNG strip.")] = False,
    json_out: Annotated[str, typer.Option("--json", help="Write the search tree as JSON here ('-' for stdout).")] = "",
    quiet: Quiet = False,
) -> None:
    """Inspect the planner on one state from a dataset store or a live game.

    Prints the beam search tree (actions, imagined rewards, Q̂, scores, kept nodes, chosen action) and writes
    the decoded imagined frames of each kept beam as a PNG strip, under the real next frames when the state
    comes from a store.

    Example: jowa plan --ckpt runs/jowa/final --tokenizer runs/tok/final --data data/atari5/Pong.zarr --index 1234
    --beam 3 --horizon 2
    """
    from rich.console import Console

    from jowa_core.checkpoint import check_tokens_tokenizer
    from jowa_core.data.store import open_store
    from jowa_core.devices import pick_device
    from jowa_core.models.tokenizer import fingerprint, load_tokenizer
    from jowa_core.models.world_action import load_world_action
    from jowa_core.planning.inspect import inspect_state, render_strip

    if data and index is None:
        raise ValueError("--data needs --index (the step to plan from)")
    if not data and not game:
        raise ValueError("give --data and --index, or --game for a live game")
    dev = pick_device(device)
    gs = open_store(data) if data else None
    model, meta = load_world_action(ckpt, dev)
    tok = load_tokenizer(tokenizer, dev)
    check_tokens_tokenizer(meta, fingerprint(tokenizer), ckpt, tokenizer)
    result = inspect_state(model, tok, game=game or None, store=gs, index=index, live_seed=seed, history=history,
                           beam=beam, horizon=horizon, gamma=gamma, live_steps=live_steps,
                           reward_mode=imagined_reward)
    console = Console(quiet=quiet)
    console.print(rich_tree(result))
    if not no_png and result["tree"]:
        where = index if gs is not None else f"seed{seed}"
        strip = render_strip(result, tok, png or f"plan_{result['game']}_{where}.png", store=gs)
        result["png"] = strip
        console.print(f"imagined frames: {strip['path']} ({strip['rows']} rows x {strip['cols']} steps"
                      f"{', first row: the real next frames' if gs is not None else ''})", highlight=False)
    emit_json(result, json_out or None)


def rich_tree(result: dict):
    """The search as a rich Tree: valid children under their parents, kept nodes bold, the chosen path green."""
    from rich.tree import Tree

    src = result["source"]
    where = (f"store step {src['index']} (episode {src['episode']})" if src["kind"] == "store"
             else f"live, seed {src['seed']}, after {src['steps']} steps")
    q = "  ".join(f"{a} {v:.3f}" for a, v in result["root"]["q"].items())
    chosen = result["chosen"]
    root = Tree(f"[bold]{result['game']}[/] — {where}; {result['history']} steps of context, K={result['beam']}, "
                f"H={result['horizon']}, γ={result['gamma']:g}, r̂ {result['reward_mode']}\nroot Q̂: {q}\n"
                f"chosen: [bold green]{chosen['action']}[/] (score {chosen['score']:.3f})")
    if "real" in result:
        r = result["real"]
        root.add(f"[dim]store: took {r['action']}, reward {r['reward']:+g}"
                 f"{', terminal' if r['terminal'] else ''}[/]")
    branches = {"root": root}
    for depth in result["tree"]:
        for n in depth:
            if not n["valid"]:
                continue
            label = (f"{n['action']}  r̂ {n['reward']:+.3f}  max Q̂ {n['q_max']:.3f}  score {n['score']:.3f}"
                     + ("  (kept)" if n["kept"] else ""))
            style = "bold green" if n["best"] else "bold" if n["kept"] else "dim"
            parent = branches.get(n["parent"])
            if parent is not None:
                branches[n["id"]] = parent.add(f"[{style}]{label}[/]")
    return root
