import json,sys,statistics
allp=[]
for d in sys.argv[1:]:
    r=json.load(open(f"{d}/report.json"))['extra']['p6']
    runs=r.get('per_run') or r.get('runs')
    diffs=[(x['p99_swapping_us']-x['p99_no_swaps_us'])/1000 for x in runs]
    allp+=diffs
    print(d, ' '.join('%+.3f'%x for x in diffs), 'median %+.3f'%statistics.median(diffs), 'reported %+.3f'%(r['p99_difference_us']/1000))
print('pooled n=%d median %+.3f mean %+.3f'%(len(allp),statistics.median(allp),statistics.mean(allp)))
