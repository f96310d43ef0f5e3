import AFXDPRings
import Testing

@Suite("IndexStack")
struct IndexStackTests {
    @Test("push and pop are last in, first out; counts track every step")
    func lifoOrder() {
        var stack = IndexStack(capacity: 5)
        defer { stack.deallocate() }
        #expect(stack.isEmpty)
        #expect(!stack.isFull)
        #expect(stack.freeCapacity == 5)
        #expect(stack.pop() == nil)

        let pushed: [UInt32] = [7, 0, UInt32.max, 42, 3]
        for (n, index) in pushed.enumerated() {
            stack.push(index)
            #expect(stack.count == n + 1)
            #expect(stack.freeCapacity == 5 - (n + 1))
            #expect(stack.isFull == (n == 4))
            #expect(!stack.isEmpty)
            #expect(stack.contains(index))
        }
        #expect(!stack.contains(8))

        var popped: [UInt32] = []
        while let index = stack.pop() {
            popped.append(index)
            #expect(!stack.isFull)
            #expect(stack.freeCapacity == 5 - stack.count)
        }
        #expect(popped == pushed.reversed())
        #expect(stack.isEmpty)
        #expect(stack.pop() == nil)
        #expect(!stack.contains(7))

        // Interleaved: a pop always gives the most recent push still held.
        stack.push(1)
        stack.push(2)
        #expect(stack.pop() == 2)
        stack.push(3)
        #expect(stack.pop() == 3)
        #expect(stack.pop() == 1)
        #expect(stack.pop() == nil)
    }

    @Test("a stack of capacity 0 is both empty and full")
    func zeroCapacity() {
        var stack = IndexStack(capacity: 0)
        defer { stack.deallocate() }
        #expect(stack.isEmpty)
        #expect(stack.isFull)
        #expect(stack.freeCapacity == 0)
        #expect(stack.pop() == nil)
    }

    @Test("pushing onto a full stack traps (an index given back twice)")
    func overflowTraps() async {
        await #expect(processExitsWith: .failure) {
            var stack = IndexStack(capacity: 2)
            stack.push(1)
            stack.push(2)
            stack.push(1)
        }
        await #expect(processExitsWith: .failure) {
            var stack = IndexStack(capacity: 0)
            stack.push(0)
        }
    }

    @Test("filling to capacity exactly does not trap")
    func fillExactly() async {
        await #expect(processExitsWith: .success) {
            var stack = IndexStack(capacity: 3)
            stack.push(1)
            stack.push(2)
            stack.push(3)
            precondition(stack.isFull && stack.pop() == 3)
            stack.deallocate()
        }
    }
}
