"""The `jowa` command line. Commands are thin: parse options, call one jowa_core function, print."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="jowa",
    help="JOWA toolkit: DQN-Replay data, world-action model pretraining, planning and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from jowa_cli import (  # noqa: E402
    bench_cmd,
    collect_cmd,
    data_cmd,
    demo_cmd,
    evaluate_cmd,
    finetune_cmd,
    import_cmd,
    learning_cmd,
    plan_cmd,
    pretrain_cmd,
    report_cmd,
    tokenizer_cmd,
    verify_cmd,
)

app.command("prepare-data", help=data_cmd.prepare_data.__doc__.splitlines()[0])(data_cmd.prepare_data)
app.command("collect", help=collect_cmd.collect.__doc__.splitlines()[0])(collect_cmd.collect)
app.command("train-tokenizer", help=tokenizer_cmd.train_tokenizer.__doc__.splitlines()[0])(
    tokenizer_cmd.train_tokenizer
)
app.command("tokenize", help=tokenizer_cmd.tokenize.__doc__.splitlines()[0])(tokenizer_cmd.tokenize)
app.command("pretrain", help=pretrain_cmd.pretrain.__doc__.splitlines()[0])(pretrain_cmd.pretrain)
app.command("finetune", help=finetune_cmd.finetune.__doc__.splitlines()[0])(finetune_cmd.finetune)
app.command("evaluate", help=evaluate_cmd.evaluate.__doc__.splitlines()[0])(evaluate_cmd.evaluate)
app.command("report", help=report_cmd.report.__doc__.splitlines()[0])(report_cmd.report)
app.command("plan", help=plan_cmd.plan.__doc__.splitlines()[0])(plan_cmd.plan)
app.command("import-official", help=import_cmd.import_official.__doc__.splitlines()[0])(
    import_cmd.import_official
)
app.command("demo", help=demo_cmd.demo.__doc__.splitlines()[0])(demo_cmd.demo)
app.command("learning-check", help=learning_cmd.learning_check.__doc__.splitlines()[0])(learning_cmd.learning_check)
app.command("verify", help=verify_cmd.verify.__doc__.splitlines()[0])(verify_cmd.verify)
app.add_typer(bench_cmd.app, name="bench", help="Benchmarks: data conversion and loading, training throughput and MFU.")

if __name__ == "__main__":
    app()
