"""Write the synthetic shapes dataset (COCO format) to ROOT.

    python tools/misc/make_shapes.py data/shapes --num-train 500 --num-val 100 --img-size 256 --seed 0
"""
import argparse

from mixprec.data import make_shapes_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Generate the synthetic shapes COCO dataset')
    parser.add_argument('root', help='output directory (gets train/, val/, annotations/)')
    parser.add_argument('--num-train', type=int, default=500)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--img-size', type=int, default=256, help='long side of each image in px')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--min-shapes', type=int, default=2)
    parser.add_argument('--max-shapes', type=int, default=6)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    paths = make_shapes_dataset(args.root, num_train=args.num_train, num_val=args.num_val, img_size=args.img_size,
                                seed=args.seed, min_shapes=args.min_shapes, max_shapes=args.max_shapes)
    for split, path in paths.items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
