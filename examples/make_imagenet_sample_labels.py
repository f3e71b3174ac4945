"""Write the labels file of ../shared/data/imagenet-sample: "filename index" per line.

The class of each image is the WordNet id prefix of its file name; its index is the 0-based
line number of that id in synset_words.txt (the usual PyTorch/Caffe order).

    python examples/make_imagenet_sample_labels.py [DATA_DIR] > examples/imagenet_sample_labels.txt
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default / "imagenet-sample"
    wnids = [line.split()[0] for line in (folder / "synset_words.txt").read_text().splitlines()]
    index = {w: i for i, w in enumerate(wnids)}
    for path in sorted(folder.glob("*.JPEG")):
        print(f"{path.name} {index[path.name.split('_')[0]]}")


if __name__ == "__main__":
    main()
