"""Layer 8, apps: what the `mkviz` command runs. Imports every layer below; nothing imports it.

    cli             the `mkviz` command: dispatches to a subcommand module's `main(argv)`
    demo            `mkviz demo` (demo_pretrained: the same on a pretrained timm model)
    bench           `mkviz bench` (bench_suite: the suite; bench_timing: how it measures; bench_record: the cost
                    of recording attention)
    shipped         the shipped checkpoints' recipes (`python -m mkviz.shipped`)
"""
