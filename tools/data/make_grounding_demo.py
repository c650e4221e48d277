#!/usr/bin/env python
"""Build the visual-grounding demo data (MDETR's RefCOCO format) from package-shipped content.

    python tools/data/make_grounding_demo.py [--out data/demo_grounding] [--seed 0]
        [--variant demo|all|source|target|relations] [--num-train 600] [--num-val 100] [--num-test 100]
        [--image-size 160] [--refs-per-scene 2] [--jitter 0] [--skip-if-current]

Writes, for each variant, OUT/<variant>/finetune_refcoco_{train,val,testA,testB}.json,
OUT/<variant>/scenes_<split>.json and OUT/<variant>/images/*.jpg, read by
configs/_base_/datasets/grounding_demo.py (target) and grounding_demo_source.py (source).

  source:    name grounding ("the banana"): pre-train a grounding model on it.
  target:    the same task in other words ("a puppy", "the desert plant"): the transfer task.
  relations: referring expressions that need size, position or relations
             ("the big dog face", "the fish left of the yellow banana"); not in the demo.
  demo (default): source and target.

--skip-if-current leaves a variant folder alone if its build.json says it was written by this
version of the builder with these arguments (tools/demo.py builds this way, so data left by an
older version is rebuilt). Deterministic given --seed.
Content: OpenMoji emoji (CC BY-SA 4.0) on scikit-image sample photos.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from sherl_mm.demo.grounding import DEMO_VARIANTS, VARIANTS, build_grounding_demo  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='data/demo_grounding', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variant', default='demo', choices=('demo', 'all') + VARIANTS,
                        help=f'demo: {" and ".join(DEMO_VARIANTS)}; all: {", ".join(VARIANTS)}')
    parser.add_argument('--num-train', type=int, default=600, help='training expressions per variant')
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--num-test', type=int, default=100, help='expressions in each of testA and testB')
    parser.add_argument('--image-size', type=int, default=160, help='shorter image side in pixels')
    parser.add_argument('--refs-per-scene', type=int, default=2, choices=(1, 2),
                        help='expressions (different referents) per image')
    parser.add_argument('--jitter', type=float, default=0.0,
                        help='random offset of an emoji in its grid cell, as a fraction of the free room '
                             '(0: centred)')
    parser.add_argument('--skip-if-current', action='store_true',
                        help='keep a variant folder whose build.json matches this builder version and '
                             'these arguments')
    args = parser.parse_args(argv)
    variants = {'demo': DEMO_VARIANTS, 'all': VARIANTS}.get(args.variant, (args.variant, ))
    paths = build_grounding_demo(args.out, seed=args.seed, variants=variants, num_train=args.num_train,
                                 num_val=args.num_val, num_test=args.num_test, image_size=args.image_size,
                                 refs_per_scene=args.refs_per_scene, jitter=args.jitter,
                                 skip_if_current=args.skip_if_current)
    for variant, splits in paths.items():
        for split, path in splits.items():
            with open(path) as f:
                raw = json.load(f)
            files = {im['file_name'] for im in raw['images']}
            print(f'{variant:6s} {split:5s}: {len(raw["images"])} expressions on {len(files)} images -> {path}')


if __name__ == '__main__':
    main()
