"""One conv at the training step's shape, Winograd on and off: python bench/winograd_ops.py 8,140,140 128 3/2,3/3 (shape, channels, k/dilation list); prints (wall s, CPU s) medians."""
import sys, time, statistics, numpy as np, jax, jax.numpy as jnp
from ambsn_jax.ops import conv as C
def med(f, r=3):
    f(); ts=[]; cs=[]
    for _ in range(r):
        t=time.perf_counter(); c=time.process_time(); f(); ts.append(time.perf_counter()-t); cs.append(time.process_time()-c)
    return round(statistics.median(ts),4), round(statistics.median(cs),4)
shape=tuple(int(s) for s in sys.argv[1].split(",")); ch=int(sys.argv[2]); cases=[tuple(map(int,c.split("/"))) for c in sys.argv[3].split(",")]
rng=np.random.RandomState(0)
x=jnp.asarray(rng.randn(*shape,ch),jnp.float32)
for k,d in cases:
    w=jnp.asarray(rng.randn(k,k,ch,ch),jnp.float32); p=d*(k//2); pad=((p,p),(p,p))
    def f(x,w,on):
        with C.winograd(on): return C.conv_general_dilated(x,w,(1,1),pad,rhs_dilation=(d,d),dimension_numbers=("NHWC","HWIO","NHWC"))
    for on in (False, True):
        fw=jax.jit(lambda x,w: f(x,w,on)); gr=jax.jit(jax.grad(lambda x,w: jnp.vdot(f(x,w,on), f(x,w,on)), argnums=(0,1)))
        print(f"k{k} d{d} winograd={on}: fwd {med(lambda: fw(x,w).block_until_ready())}  fwd+grads {med(lambda: jax.block_until_ready(gr(x,w)))}", flush=True)
