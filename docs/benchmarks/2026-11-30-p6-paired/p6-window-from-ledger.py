import json,glob,sys,datetime,bisect
def ms(x): return int(datetime.datetime.fromisoformat(x.replace('Z','+00:00')).timestamp()*1000)
def pct(a,p):
    a=sorted(a); return a[min(len(a)-1,int(len(a)*p))] if a else 0
win=[];far=[];base=[]
for d in sys.argv[1:]:
    recs=[]
    for f in sorted(glob.glob(f'{d}/ledger/seg-*.jsonl')):
        for line in open(f):
            if '"type":"auction"' not in line: continue
            r=json.loads(line)
            recs.append((ms(r['at']),r['generation'],(r.get('models') or {}).get('realization'),r['took_us']))
    recs.sort()
    swaps=[];prev=None
    for at,g,m,t in recs:
        if prev and g!=prev[0] and m!=prev[1]: swaps.append(at)
        prev=(g,m)
    for k in range(0,len(recs),24000):
        L=recs[k:k+24000]; gens=len(set(x[1] for x in L)); L=L[4000:]
        if gens<=3: base+=[x[3] for x in L]; continue
        for at,g,m,t in L:
            i=bisect.bisect_right(swaps,at)
            c=[at-swaps[j] for j in (i-1,i) if 0<=j<len(swaps)]
            dd=min(c,key=abs) if c else 10**9
            (win if -40<=dd<20 else far).append(t)
for name,v in (('base legs',base),('swap legs, all',win+far),('swap window -40..+20 ms',win),('swap legs, rest',far)):
    print('%-24s n=%6d p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f'%(name,len(v),pct(v,.5)/1000,pct(v,.9)/1000,pct(v,.99)/1000,pct(v,.999)/1000))
