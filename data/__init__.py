"""Data: the synthetic shapes world, webdataset shards, DataModules and the attribute judge.

Importing it registers the judge with the core (the ``multimodal.heads`` entry point ``judge`` names this
package): the kind ``judge`` and the packaged judge.
"""

from multimodal import registry

registry.declare_kind("judge", "data.judge")
registry.register_packaged("judge")
