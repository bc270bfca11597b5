"""The test kit: what the tests, the benchmarks and the scripts build and measure with (not part of the pack's
runtime; ComfyUI never imports it).

adapters: random IP-Adapter weights in the published key layouts and shapes, and files of them.
aten: AtenLog, the aten ops run inside a block.
"""
