import json, re, glob, os, sys
P = os.path.join(os.environ.get('PEER', '/tmp/peer'), 'runs')
DS = ['freiburg1_xyz-groundtruth-s7-160x120', 'orbit-400-160x120', 'figure-eight-400-160x120', 'corridor-400-160x120']
LV = ['toy', 'vggt', 'hard', 'row2', 'row3']
def evo(p):
    t = open(p).read(); m = re.search(r'rmse\s+([0-9.eE+-]+)', t); return float(m.group(1)) if m else float('nan')
def jl(p):
    try: return json.loads(open(p).read().strip().splitlines()[-1])
    except Exception: return {}
rows = []
for d in DS:
    for l in LV:
        R = f'{P}/{d}/{l}'
        if not os.path.exists(R + '/vggtd_eval.json'): continue
        ve = jl(R + '/vggtd_eval.json'); summ = json.load(open(R + '/out/summary.json'))
        r = dict(ds=d, lv=l, v_eval=ve.get('rmse'), v_pairs=ve.get('pairs'), v_evo=evo(R + '/vggtd_evo.txt'),
                 v_loops=summ['loops'], v_kf=summ['keyframes'], v_win=summ['windows'],
                 v_backend=summ['phase_times']['backend_s'], v_total=summ['phase_times']['total_s'])
        for o in ['drop-first', 'drop-last']:
            for lp in ['none', 'vggtd']:
                k = f'{o}_{lp}'; j = jl(f'{R}/peer_{k}.json')
                r[k] = evo(f'{R}/peer_{k}_evo.txt'); r[k + '_loops'] = j.get('peer_loops'); r[k + '_kf'] = j.get('keyframes')
                r[k + '_s'] = j.get('total_s'); r[k + '_backend_s'] = j.get('backend_s')
        r['regular'] = jl(f'{R}/peer_drop-first_none.json').get('regular_windows')
        r['loopwin'] = jl(f'{R}/peer_drop-first_none.json').get('loop_check_windows')
        rows.append(r)
json.dump(rows, open(os.path.join(os.environ.get('PEER', '/tmp/peer'), 'results.json'), 'w'), indent=1)
short = {'freiburg1_xyz-groundtruth-s7-160x120': 'fr1/xyz', 'orbit-400-160x120': 'orbit', 'figure-eight-400-160x120': 'figure-eight', 'corridor-400-160x120': 'corridor'}
lvname = {'toy': 'toy', 'vggt': 'vggt', 'hard': 'hard', 'row2': 'white 2%/0.3°/5mm/2%', 'row3': 'white 5%/1°/20mm/5%'}
mm = lambda x: f'{1000*x:.2f}'
print('| dataset | noise | vggtd ATE mm | vggtd loops | peer ATE mm, no loops | peer ATE mm, vggtd loops fed (loops used) | best peer mm | ratio vggtd/best peer | ratio vggtd/peer no-loop |')
print('|---|---|---|---|---|---|---|---|---|')
for r in rows:
    nl = min(r['drop-first_none'], r['drop-last_none'])
    nlk = 'drop-first' if r['drop-first_none'] <= r['drop-last_none'] else 'drop-last'
    fl = min(r['drop-first_vggtd'], r['drop-last_vggtd'])
    flk = 'drop-first' if r['drop-first_vggtd'] <= r['drop-last_vggtd'] else 'drop-last'
    best = min(nl, fl)
    print(f"| {short[r['ds']]} | {lvname[r['lv']]} | {mm(r['v_eval'])} | {r['v_loops']} | {mm(nl)} ({nlk}) | {mm(fl)} ({flk}, {r[flk+'_vggtd_loops']}) | {mm(best)} | {r['v_eval']/best:.2f} | {r['v_eval']/nl:.2f} |")
print()
print('| dataset | noise | keyframes v/p | windows (regular + loop-check) | vggtd eval vs evo mm | peer df/none | df/loops | dl/none | dl/loops | vggtd backend s | peer run s (df/none) |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
for r in rows:
    print(f"| {short[r['ds']]} | {r['lv']} | {r['v_kf']}/{r['drop-first_none_kf']} | {r['regular']} + {r['loopwin']} | {mm(r['v_eval'])} / {mm(r['v_evo'])} | {mm(r['drop-first_none'])} | {mm(r['drop-first_vggtd'])} ({r['drop-first_vggtd_loops']}) | {mm(r['drop-last_none'])} | {mm(r['drop-last_vggtd'])} ({r['drop-last_vggtd_loops']}) | {r['v_backend']:.2f} | {r['drop-first_none_s']} |")
