#!/usr/bin/env python
"""Build the VQA demo data (VQAv2 format) from package-shipped images.

    python tools/data/make_vqa_demo.py [--out data/demo_vqa] [--seed 0]

Writes OUT/images/COCO_demo_{train,val}_*.jpg, the VQAv2 question and
annotation files and OUT/answer_vocab.json, read by
configs/_base_/datasets/vqa_demo.py. Deterministic given --seed.
Content: scikit-image sample photos and OpenMoji emoji (CC BY-SA 4.0).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from sherl_mm.demo.vqa import build_vqa_demo  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo_vqa', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train-images', type=int, default=500)
    parser.add_argument('--num-val-images', type=int, default=100)
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--annotator-noise', type=float, default=0.1,
                        help='probability that a simulated annotator gives a wrong answer')
    args = parser.parse_args(argv)
    paths = build_vqa_demo(args.out, seed=args.seed, num_train_images=args.num_train_images,
                           num_val_images=args.num_val_images, image_size=args.image_size,
                           annotator_noise=args.annotator_noise)
    for split in ('train', 'val'):
        with open(paths[f'{split}_questions']) as f:
            print(f'{split}: {len(json.load(f)["questions"])} questions -> {paths[f"{split}_questions"]}')
    with open(paths['answer_vocab']) as f:
        print(f'answer vocabulary: {len(json.load(f))} answers -> {paths["answer_vocab"]}')


if __name__ == '__main__':
    main()
