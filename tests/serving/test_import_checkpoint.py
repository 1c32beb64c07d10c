"""The import checkpoint written off the event loop still records every acknowledged row."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from serving.bulk.importer import Importer, ImportOptions


def test_concurrent_acknowledgements_all_reach_the_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "rows.csv"
    src.write_text("customer_id,type\n")
    options = ImportOptions(
        url="http://127.0.0.1:9",
        files=[str(src)],
        checkpoint=tmp_path / "ckpt.json",
        rejects=tmp_path / "rejects.csv",
    )
    importer = Importer(options)
    importer._open_rejects()
    fp = importer.checkpoint.file(str(src), "identity-of-rows")
    seen_while_saving: list[int] = []

    async def lane(rows: range) -> None:
        for index in rows:  # each acknowledged "batch" is one row here
            fp.mark(index)
            importer.summary.applied += 1
            await importer._save_checkpoint()
            # Once the save returned, the file on disk covers this row.
            saved = json.loads(options.checkpoint.read_text())
            seen_while_saving.append(saved["files"][0]["done_below"])
            progress = saved["files"][0]
            assert progress["done_below"] > index or index in progress["done_above"]

    async def run() -> None:
        await asyncio.gather(*(lane(range(k, 400, 8)) for k in range(8)))

    asyncio.run(run())
    saved = json.loads(options.checkpoint.read_text())
    assert saved["files"][0]["done_below"] == 400
    assert saved["counters"]["applied"] == 400
    assert len(seen_while_saving) == 400
    assert importer._saved == importer._marks == 400  # the last write covered every save
