"""(being written: k-diffusion's solver set)"""
