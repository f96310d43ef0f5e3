import AFXDP
print("afxdp-bench: not yet")
