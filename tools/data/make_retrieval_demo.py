#!/usr/bin/env python
"""Build the image-text retrieval demo data (Karpathy format) from package-shipped images.

    python tools/data/make_retrieval_demo.py [--out data/demo_retrieval] [--seed 0]

Writes OUT/images/*.jpg and OUT/dataset_demo.json, read by
configs/_base_/datasets/retrieval_demo.py. Deterministic given --seed.
Content: scikit-image sample photos and OpenMoji emoji (CC BY-SA 4.0).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from sherl_mm.demo.retrieval import build_retrieval_demo  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo_retrieval', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=600, help='composited training images (plus 22 photos)')
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--num-test', type=int, default=100)
    parser.add_argument('--image-size', type=int, default=128)
    args = parser.parse_args(argv)
    path = build_retrieval_demo(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                                num_test=args.num_test, image_size=args.image_size)
    with open(path) as f:
        images = json.load(f)['images']
    counts = {s: sum(im['split'] == s for im in images) for s in ('train', 'val', 'test')}
    print(f'wrote {path}: {len(images)} images ({counts}), 5 captions each')


if __name__ == '__main__':
    main()
