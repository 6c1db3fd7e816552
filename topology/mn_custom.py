"""Entry file for `mn --custom topology/mn_custom.py --topo netkv-fattree,k=4,gpus=4` (run mn with the venv's Python)."""

from netkv.topology.mininet_fabric import NetKVFatTree

topos = {"netkv-fattree": NetKVFatTree}
