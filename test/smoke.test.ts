import t from 'tap'
t.test('tap runs typescript', async (t) => {
  const x: bigint = 2n ** 64n
  t.equal(x.toString(), '18446744073709551616')
})
