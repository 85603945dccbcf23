"""Source names of the CLI -> configured source readers."""

from __future__ import annotations

import os

from tfrecords_builder.source import BuildError

SOURCE_NAMES = ["demo", "megc2019_crops", "seed", "casme2", "samm", "smic"]
DEMO_DIR = os.path.join("data", "demo_corpus")


def make_source(name: str, input_dir: str | None = None, coding_sheet: str | None = None,
                face_boxes: str | None = None, flow_method: str = "tvl1"):
    if name == "megc2019_crops":
        from tfrecords_builder.crops_sources import Megc2019CropsSource
        return Megc2019CropsSource(_need_dir(name, input_dir))
    if name == "seed":
        from tfrecords_builder.crops_sources import SeedSource
        return SeedSource(_need_dir(name, input_dir))
    from tfrecords_builder import raw_sources
    if name == "demo":
        from tfrecords_builder.demo import generate_demo_corpus
        corpus = generate_demo_corpus(input_dir or DEMO_DIR)
        return raw_sources.Casme2Source(input_dir=corpus.input_dir, coding_sheet=corpus.coding_sheet,
                                        flow_method=flow_method, face_boxes=face_boxes or corpus.face_boxes,
                                        database="demo")
    cls = {"casme2": raw_sources.Casme2Source, "samm": raw_sources.SammSource,
           "smic": raw_sources.SmicSource}[name]
    if not coding_sheet:
        raise BuildError("--coding_sheet", f"source {name} needs its coding sheet (.xlsx)")
    return cls(input_dir=_need_dir(name, input_dir), coding_sheet=coding_sheet,
               flow_method=flow_method, face_boxes=face_boxes)


def _need_dir(name: str, input_dir: str | None) -> str:
    if not input_dir:
        raise BuildError("--input_dir", f"source {name} needs --input_dir")
    if not os.path.isdir(input_dir):
        raise BuildError(input_dir, "input folder does not exist")
    return input_dir
