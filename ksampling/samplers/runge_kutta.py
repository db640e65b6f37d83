"""(being written: solvers beyond k-diffusion)"""
