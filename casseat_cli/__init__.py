"""The composition root: the `casseat-edge` command (`casseat_cli.cli`) and the main job
(`casseat_cli.pipeline`), the one place that imports every stage package (`training`,
`quantize`, `export`, `runtime`). The core, `casseat_edge`, imports none of them; stage packages
import the core and not each other."""
